"""Topic events that are not lost to timing: an event is kept for the runs that wait on
its topic later (within the retention), and the old "only the runs waiting now" is there
on request (``retain=False``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import wait_status, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from stemd._store.base import Store

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
START = datetime(2030, 1, 1, tzinfo=UTC)


@stemd.script("events.approve")
async def approve(ctx: stemd.ScriptContext) -> str:
    """Waits for the approval event; returns its decision."""
    decision = await ctx.wait_for_event("events.approved")
    return f"approved-by:{decision['by']}"


@stemd.script("events.later")
async def later(ctx: stemd.ScriptContext) -> str:
    """Sleeps, then waits for an event on its topic; returns its payload."""
    await ctx.sleep(20)
    decision = await ctx.wait_for_event("events.later")
    return str(decision)


async def _waiting(app: stemd.App, topic: str, run_id: str) -> bool:
    return run_id in {s.run_id for s in await app.runs_waiting_on(topic)}


async def test_an_emit_right_after_start_reaches_the_run(store: Store) -> None:
    """An emit issued right after start_workflow, with no polling for the wait, reaches
    the run: it takes the event when it gets to its wait."""
    async with stemd.App(store=store, workflows=[approve]) as app:
        run_id = await app.start_workflow(approve)
        await app.emit("events.approved", {"by": "ana"})
        done = await app.wait_for_completion(run_id, timeout=10)
        assert (done.status, done.value) == (RunStatus.COMPLETED, "approved-by:ana")


async def test_an_event_emitted_before_a_run_starts_does_not_reach_it(store: Store) -> None:
    """A run takes only the events emitted after it was created."""
    async with stemd.App(store=store, workflows=[approve]) as app:
        await app.emit("events.approved", {"by": "early"})
        run_id = await app.start_workflow(approve)
        await wait_until(_waiting, app, "events.approved", run_id, what="the wait")
        assert await app.emit("events.approved", {"by": "ana"}) == 1
        done = await app.wait_for_completion(run_id, timeout=10)
        assert done.value == "approved-by:ana"


async def test_an_event_not_kept_reaches_the_runs_waiting_now(store: Store) -> None:
    """emit(retain=False) resumes the runs waiting at that moment, as emits always did."""
    async with stemd.App(store=store, workflows=[approve]) as app:
        run_id = await app.start_workflow(approve)
        await wait_until(_waiting, app, "events.approved", run_id, what="the wait")
        assert await app.emit("events.approved", {"by": "ana"}, retain=False) == 1
        done = await app.wait_for_completion(run_id, timeout=10)
        assert done.value == "approved-by:ana"


async def test_an_event_not_kept_is_not_there_for_a_later_wait(store: Store) -> None:
    """A run that is not waiting when an event is emitted with retain=False never sees it;
    the next kept event reaches it."""
    clock = ManualClock(START)
    async with stemd.App(store=store, workflows=[later], clock=clock) as app:
        run_id = await app.start_workflow(later)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.emit("events.later", "not kept", retain=False) == 0
        await app.emit("events.later", "kept")
        clock.advance(21)
        done = await app.wait_for_completion(run_id, timeout=10)
        assert done.value == "kept"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_an_event_past_its_retention_is_not_taken(kind: str, tmp_path: Path) -> None:
    """An event is kept event_retention seconds: a wait that comes later does not take it
    (and the timer forgets it); one that comes within the retention does."""
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'r.db'}"
    clock = ManualClock(START)
    async with stemd.App(
        store=url,
        workflows=[later],
        clock=clock,
        options=stemd.AppOptions(event_retention=10),
    ) as app:
        gone = await app.start_workflow(later, run_id="gone")
        kept = await app.start_workflow(later, run_id="kept")
        for run_id in (gone, kept):
            await wait_status(app, run_id, RunStatus.SUSPENDED)
        await app.emit("events.later", "short")
        await app.emit("events.later", "long", retain=timedelta(seconds=30))
        clock.advance(21)
        done = await app.wait_for_completion(gone, timeout=10)
        assert done.value == "long"
        assert await app.store.prune_events(clock.now()) == 1
        assert await app.store.prune_events(clock.now() + timedelta(seconds=10)) == 1
        assert (await app.wait_for_completion(kept, timeout=10)).value == "long"


async def test_retention_is_checked_before_anything_is_written() -> None:
    """A retention that is no duration is refused with a clear error."""
    with pytest.raises(ValueError, match="event_retention"):
        stemd.App(options=stemd.AppOptions(event_retention=-1))
    async with stemd.App(workflows=[approve]) as app:
        with pytest.raises(ValueError, match="retain"):
            await app.emit("events.approved", 1, retain=-5)
        with pytest.raises(TypeError, match="retain"):
            await app.emit("events.approved", 1, retain="1h")  # type: ignore[arg-type]
        assert await app.store.prune_events(START + timedelta(days=1)) == 0
