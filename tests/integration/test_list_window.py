"""``list`` by creation time: ``created_after``/``created_before`` of ``App.page_runs``, the
wire's and the HTTP API's ``list``, paged through the store's listing without skipping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

import stemd
from stemd._runwindow import SCAN
from stemd.testing import ManualClock
from tests.helpers import open_app
from tests.integration.test_http_api import served

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

idle = stemd.Flow("window.idle")


@idle.step("wait")
async def wait(ctx: stemd.FlowContext) -> None:
    """Waits on ``window.go``."""
    await ctx.wait_for_event("window.go")


T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


async def _start_minutely(app: stemd.App, clock: ManualClock, n: int) -> None:
    """Runs ``m0``…``m{n-1}``, created a minute apart from T0 on."""
    for i in range(n):
        await app.start_run("window.idle", run_id=f"m{i}")
        clock.advance(60)


async def _all_pages(app: stemd.App, **window: datetime) -> list[str]:
    ids: list[str] = []
    after = None
    for _ in range(100):
        page = await app.page_runs(limit=1, after=after, **window)
        ids += [r.run_id for r in page.runs]
        after = page.next
        if after is None:
            return ids
    raise AssertionError("no last page")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_page_runs_filters_by_creation_time_and_pages_without_skipping(
    kind: str, tmp_path: Path
) -> None:
    """page_runs(created_after=, created_before=) lists the runs created strictly within
    the window, newest first, and paging one by one yields each of them exactly once."""
    clock = ManualClock(T0)
    store = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'w.db'}"
    async with open_app(idle, clock=clock, store=store, workers=False) as app:
        await _start_minutely(app, clock, 6)
        window = {
            "created_after": T0 + timedelta(minutes=1),
            "created_before": T0 + timedelta(minutes=5),
        }
        page = await app.page_runs(**window)  # type: ignore[arg-type]
        assert [r.run_id for r in page.runs] == ["m4", "m3", "m2"]
        assert page.next is None
        assert await _all_pages(app, **window) == ["m4", "m3", "m2"]
        assert [
            r.run_id for r in await app.list_runs(created_before=T0 + timedelta(seconds=30))
        ] == ["m0"]
        since = await app.list_runs(created_after=(T0 + timedelta(minutes=3)).isoformat())
        assert [r.run_id for r in since] == ["m5", "m4"]


async def test_a_window_far_down_the_list_is_reached_page_by_page() -> None:
    """When the window lies beyond what one call reads, the page comes back short with a
    cursor, and following it reaches every run of the window."""
    clock = ManualClock(T0)
    async with open_app(idle, clock=clock, workers=False) as app:
        await _start_minutely(app, clock, SCAN + 5)
        first = await app.page_runs(limit=1, created_before=T0 + timedelta(seconds=90))
        assert (first.runs, first.next is not None) == ([], True)
        assert await _all_pages(app, created_before=T0 + timedelta(seconds=90)) == ["m1", "m0"]


async def test_bad_times_are_refused_and_change_nothing() -> None:
    """A time without a zone, or not a time, is a clear error."""
    async with open_app(idle, workers=False) as app:
        with pytest.raises(stemd.StemError, match="time zone"):
            await app.page_runs(created_after=datetime(2026, 1, 1))
        with pytest.raises(stemd.StemError, match="ISO 8601"):
            await app.list_runs(created_before="yesterday")


async def test_the_list_verb_filters_by_creation_time_over_http() -> None:
    """GET /api/runs and POST /api/list take created_after/created_before (the wire's
    ``list``); a time without a zone is a 400 bad_request."""
    clock = ManualClock(T0)
    async with open_app(idle, clock=clock, workers=False) as app, served(app) as api:
        await _start_minutely(app, clock, 4)
        after = (T0 + timedelta(seconds=90)).isoformat().replace("+00:00", "Z")
        got = (await api.get(f"/api/runs?created_after={after}")).json()
        assert [r["run_id"] for r in got["runs"]] == ["m3", "m2"]
        body = {"created_before": (T0 + timedelta(seconds=90)).isoformat(), "limit": 1}
        got = (await api.post("/api/list", body)).json()
        assert [r["run_id"] for r in got["runs"]] == ["m1"]
        naive = await api.post("/api/list", {"created_after": "2026-12-03T10:00:00"})
        assert naive.status_code == 400
        assert naive.json()["error"]["code"] == "bad_request"
