"""FlowContext.iteration: how many times the step has been entered in this run, read
from the run's recorded state (CONTRACT §5)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus


class Flaky(Exception):
    """The error the flaky steps raise."""


def _polling_flow(name: str, seen: list[Any]) -> stemd.Flow:
    flow = stemd.Flow(name)

    @flow.step("poll")
    async def poll(ctx: stemd.FlowContext) -> int:
        seen.append(("poll", ctx.iteration))
        for _ in range(3):
            await ctx.sleep(10)
        return ctx.iteration

    @flow.step("after")
    async def after(ctx: stemd.FlowContext) -> int:
        seen.append(("after", ctx.iteration))
        return ctx.iteration

    return flow


async def _advance_until_done(app: stemd.App, clock: ManualClock, run_id: str) -> Any:
    """Move the clock past each sleep of the run until it completes."""
    while True:
        state = await wait_status(app, run_id, RunStatus.SUSPENDED, RunStatus.COMPLETED)
        if state.status is RunStatus.COMPLETED:
            return state
        clock.advance(10)
        await wait_until(_moved_on, app, run_id, state.updated_at, what="the run to move on")


async def _moved_on(app: stemd.App, run_id: str, since: Any) -> bool:
    state = await app.get_run(run_id)
    return (
        state is not None
        and state.updated_at > since
        and state.status
        in (
            RunStatus.SUSPENDED,
            RunStatus.COMPLETED,
        )
    )


async def test_iteration_counts_the_entries_after_each_suspension() -> None:
    """A step entered four times (three sleeps) sees iteration 1, 2, 3, 4; the next step
    starts at 1; the suspension records are not shown as checkpoints or in the timeline."""
    seen: list[Any] = []
    flow = _polling_flow("iteration.sleeps", seen)
    clock = ManualClock()
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        state = await _advance_until_done(app, clock, run_id)
    assert seen == [("poll", 1), ("poll", 2), ("poll", 3), ("poll", 4), ("after", 1)]
    assert state.checkpoints == {"poll": 4, "after": 1}
    assert [e.name for e in state.timeline] == [
        "poll@sleep#0",
        "poll@sleep#1",
        "poll@sleep#2",
        "poll",
        "after",
    ]


async def test_iteration_counts_event_waits_and_retries() -> None:
    """Re-entries after an event wait and after failed attempts each count: iteration
    goes 1, 2, 3, 4 while attempt goes 1, 1, 2, 3."""
    seen: list[tuple[int, int]] = []
    flow = stemd.Flow("iteration.retries")

    @flow.step("go", retry=stemd.Retry(max_attempts=5, backoff=1, jitter=False))
    async def go(ctx: stemd.FlowContext) -> str:
        seen.append((ctx.iteration, ctx.attempt))
        await ctx.wait_for_event("iteration.go")
        if ctx.attempt < 3:
            raise Flaky(f"attempt {ctx.attempt}")
        return "went"

    clock = ManualClock()
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.emit("iteration.go") == 1
        for entry in (2, 3):  # each fails, and is retried after its backoff
            await wait_until(_entered, seen, entry, what=f"entry {entry}")
            await wait_status(app, run_id, RunStatus.SUSPENDED)
            clock.advance(10)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "went"
    assert seen == [(1, 1), (2, 1), (3, 2), (4, 3)]


async def _entered(seen: list[Any], n: int) -> bool:
    return len(seen) >= n


async def test_a_wait_that_returns_at_once_is_not_a_re_entry() -> None:
    """A child wait on a child that already ended returns without suspending: the step
    was not entered again, so iteration does not move for it."""
    seen: list[int] = []
    child = stemd.Flow("iteration.child")

    @child.step("quick")
    async def quick(ctx: stemd.FlowContext) -> str:
        return "done"

    parent = stemd.Flow("iteration.parent")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> str:
        seen.append(ctx.iteration)
        child_id = await ctx.start_child(child)
        await ctx.sleep(10)  # the child ends meanwhile
        value: str = await ctx.wait_child(child_id)  # returns at once: no re-entry
        await ctx.sleep(10)
        return value

    clock = ManualClock()
    async with open_app(parent, child, clock=clock) as app:
        run_id = await app.start_workflow(parent)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        (kid,) = await app.list_runs(workflow="iteration.child")
        assert (await app.wait_for_completion(kid.run_id, timeout=5)).is_completed
        state = await _advance_until_done(app, clock, run_id)
    assert state.result == "done"
    assert seen == [1, 2, 3]


async def test_a_rewind_starts_the_count_again() -> None:
    """Rewinding to the step deletes its recorded entries: it starts at 1 again."""
    seen: list[Any] = []
    flow = _polling_flow("iteration.rewind", seen)
    clock = ManualClock()
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        await _advance_until_done(app, clock, run_id)
        seen.clear()
        assert await app.rewind_run(run_id, "poll")
        state = await _advance_until_done(app, clock, run_id)
    assert seen == [("poll", 1), ("poll", 2), ("poll", 3), ("poll", 4), ("after", 1)]
    assert state.checkpoints == {"poll": 4, "after": 1}


async def test_iteration_is_read_from_the_store_by_another_app(tmp_path: Path) -> None:
    """The count is recorded state: an App that never saw the earlier entries (a
    restart, another process) continues it."""
    seen: list[Any] = []
    flow = _polling_flow("iteration.durable", seen)
    store = f"sqlite:///{tmp_path}/it.db"
    clock = ManualClock()
    async with open_app(flow, clock=clock, store=store) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(10)
        await wait_until(_entered, seen, 2, what="the second entry")
        await wait_status(app, run_id, RunStatus.SUSPENDED)
    assert seen == [("poll", 1), ("poll", 2)]
    clock.advance(10)
    async with open_app(flow, clock=clock, store=store) as app:
        state = await _advance_until_done(app, clock, run_id)
    assert seen[2:] == [("poll", 3), ("poll", 4), ("after", 1)]
    assert state.result == 1
    assert state.checkpoints["poll"] == 4
