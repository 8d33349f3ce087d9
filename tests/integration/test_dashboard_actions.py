"""The dashboard's pause, resume, fork, group and schedule actions, as the pages offer
them, and what the pages show of paused and held-back runs (the browser test clicks them)."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import anyio
import pytest

import stemd
from tests.helpers import open_app, wait_status, wait_until
from tests.integration.test_http_api import served

pytestmark = pytest.mark.anyio

waits = stemd.Flow("dash.waits")


@waits.step("first")
async def first(ctx: stemd.FlowContext) -> int:
    """Returns 1."""
    return 1


@waits.step("second")
async def second(ctx: stemd.FlowContext) -> Any:
    """Waits on ``dash.go``."""
    return await ctx.wait_for_event("dash.go")


GATE: dict[str, anyio.Event] = {}


async def _hold() -> str:
    await GATE["open"].wait()
    return "done"


@stemd.script("dash.limited", limits=stemd.Limits(concurrency=1))
async def limited(ctx: stemd.ScriptContext, params: Any) -> str:
    """One step that runs until the test opens the gate; one run at a time."""
    return await ctx.step("work", _hold)


def _filters(page: str) -> dict[str, Any]:
    found = re.search(r"data-filters='([^']*)'", page)
    assert found is not None, "no group actions on the page"
    return dict(json.loads(html.unescape(found.group(1))))


async def test_the_run_page_offers_pause_then_resume_and_shows_a_paused_run() -> None:
    """A waiting run's page has Pause and Fork; once paused, its page and the list show it
    paused and offer Resume instead."""
    async with open_app(waits) as app, served(app) as api:
        await app.start_run("dash.waits", run_id="w1")
        await wait_status(app, "w1", stemd.RunStatus.SUSPENDED)
        page = (await api.get("/runs/w1")).text
        assert 'id="pause-button"' in page
        assert 'id="resume-button"' not in page
        assert 'data-action="fork"' in page
        assert "<option>first</option>" in page
        assert (await api.post("/api/pause", {"run_ids": ["w1"]})).json() == {"count": 1}
        page = (await api.get("/runs/w1")).text
        assert 'id="resume-button"' in page
        assert 'id="pause-button"' not in page
        assert 'id="paused"' in page
        assert "status-paused" in page
        assert "status-paused" in (await api.get("/runs?workflow=dash.waits")).text
        assert (await api.post("/api/resume", {"run_ids": ["w1"]})).json() == {"count": 1}
        assert "status-paused" not in (await api.get("/runs/w1")).text


async def test_group_actions_act_on_what_the_filters_select() -> None:
    """The runs list carries its filters (ages as instants) for the group actions, whose
    dry run counts what they would change; no filter, no group actions."""
    async with open_app(waits) as app, served(app) as api:
        for n in range(3):
            await app.start_run("dash.waits", run_id=f"g{n}")
        for n in range(3):
            await wait_status(app, f"g{n}", stemd.RunStatus.SUSPENDED)
        assert "data-filters" not in (await api.get("/runs")).text
        filters = _filters((await api.get("/runs?workflow=dash.waits&since=1h")).text)
        assert filters["workflow"] == "dash.waits"
        assert "created_after" in filters
        dry = await api.post("/api/pause", {**filters, "dry_run": True})
        assert dry.json()["count"] == 3
        assert all(not s.paused for s in await app.list_runs())
        assert (await api.post("/api/pause", filters)).json() == {"count": 3}
        assert all(s.paused for s in await app.list_runs())
        topic = _filters((await api.get("/runs?topic=dash.go&status=suspended")).text)
        assert topic == {"status": "suspended", "topic": "dash.go"}
        cancel = {**topic, "reason": "cancelled from the dashboard"}
        assert (await api.post("/api/cancel_many", cancel)).json() == {"count": 3}


async def test_fork_from_the_api_route_the_page_uses() -> None:
    """POST /api/runs/{id}/fork (the Fork form) starts a new run from the step."""
    async with open_app(waits) as app, served(app) as api:
        await app.start_run("dash.waits", run_id="f1")
        await wait_status(app, "f1", stemd.RunStatus.SUSPENDED)
        forked = (await api.post("/api/runs/f1/fork", {"step": "second"})).json()["run_id"]
        await wait_status(app, forked, stemd.RunStatus.SUSPENDED)
        assert 'data-run-id="' + forked + '"' in (await api.get(f"/runs/{forked}")).text


async def test_the_schedules_page_lists_schedules_with_their_actions() -> None:
    """/schedules lists each schedule with Pause (or Resume) and Trigger now; the routes
    they post to change the schedule and start a run."""
    nightly = stemd.Schedule("nightly", "dash.waits", cron="0 3 * * *")
    async with open_app(waits, schedules=[nightly]) as app, served(app) as api:
        page = (await api.get("/schedules")).text
        assert 'data-schedule="nightly"' in page
        assert 'data-action="pause_schedule"' in page
        assert 'data-action="trigger_schedule"' in page
        paused = await api.post("/api/pause_schedule", {"name": "nightly"})
        assert paused.json()["schedule"]["paused"] is True
        page = (await api.get("/schedules")).text
        assert 'data-action="resume_schedule"' in page
        assert "status-paused" in page
        run_id = (await api.post("/api/trigger_schedule", {"name": "nightly"})).json()["run_id"]
        assert await app.get_run(run_id) is not None
        assert f'href="/runs/{run_id}"' in (await api.get("/schedules")).text


async def test_a_run_held_back_by_flow_control_shows_why() -> None:
    """A run waiting for a slot of a concurrency limit says so on its page and in the list."""
    GATE["open"] = anyio.Event()
    options = stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.05))
    async with open_app(limited, options=options) as app, served(app) as api:
        await app.start_run("dash.limited", run_id="l1")
        await app.start_run("dash.limited", run_id="l2")

        async def shown(path: str, text: str) -> bool:
            # A held run tries again every few tens of milliseconds (briefly running).
            return text in (await api.get(path)).text

        held: list[str] = []

        async def listed() -> bool:
            page = (await api.get("/runs")).text
            row = r'<tr data-run="(l[12])">(?:(?!</tr>).)*held back: waiting for a slot'
            held[:] = re.findall(row, page, re.S)
            return bool(held)

        await wait_until(listed, what="the held run in the list")
        assert len(held) == 1
        await wait_until(
            shown,
            f"/runs/{held[0]}",
            'id="held-back" class="held">waiting for a slot',
            what="the run page",
        )
        GATE["open"].set()
        for r in ("l1", "l2"):
            assert (await app.wait_for_completion(r, timeout=20)).is_completed
