"""Deduplication of starts in one App: ``dedup_key`` on start_workflow, start_run and a
handle's start returns the live run started with the key; the window is the config's,
else the workflow's, else an hour; a bad key is refused and starts nothing."""

from __future__ import annotations

from typing import Any

import pytest

import stemd
from stemd._engine.dedup import DEFAULT_DEDUP_WINDOW, dedup_window
from stemd._options import LimitSettings
from stemd.testing import ManualClock
from tests.helpers import open_app

pytestmark = pytest.mark.anyio

held = stemd.Flow("dedup.held", limits=stemd.Limits(dedup_window=10))


@held.step("wait")
async def wait(ctx: stemd.FlowContext) -> Any:
    """Waits for an event, so that the run stays live."""
    return await ctx.wait_for_event("dedup.go")


async def test_a_key_returns_the_live_run_until_the_window_ends() -> None:
    """Within the 10 s window the same key returns the first run (from start_workflow,
    start_run and the handle); after it, the key starts a new run."""
    clock = ManualClock()
    async with open_app(held, clock=clock) as app:
        first = await app.start_workflow(held, {}, dedup_key="k")
        assert await app.start_run(held, {}, dedup_key="k") == (first, False)
        assert await held.start(app, {}, dedup_key="k") == first
        clock.advance(10)
        later, created = await app.start_run(held, {}, dedup_key="k")
        assert created
        assert later != first


async def test_a_bad_key_is_refused_and_starts_nothing() -> None:
    """An empty or non-string key is a StemError; no run is created."""
    async with open_app(held) as app:
        for bad in ("", 7, "x" * 513):
            with pytest.raises(stemd.StemError, match="dedup_key"):
                await app.start_run(held, {}, dedup_key=bad)  # type: ignore[arg-type]
        assert await app.list_runs() == []


def test_the_window_is_the_configs_else_the_workflows_else_an_hour() -> None:
    """[limits."name"] dedup_window wins over Limits(dedup_window=…); none: an hour."""
    assert dedup_window("dedup.held", held, {}) == 10
    overrides = {"dedup.held": LimitSettings(dedup_window=99)}
    assert dedup_window("dedup.held", held, overrides) == 99
    assert dedup_window("plain", stemd.Flow("plain"), {}) == DEFAULT_DEDUP_WINDOW
    with pytest.raises(ValueError, match="dedup_window"):
        stemd.Limits(dedup_window=0)
