"""Cancellation policies and retention, enforced by the timer (contract §2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
START = datetime(2030, 1, 1, tzinfo=UTC)


def _waiting_flow(name: str) -> stemd.Flow:
    flow = stemd.Flow(name)

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> object:
        return await ctx.wait_for_event(f"{name}.go")

    return flow


async def test_max_run_duration_cancels_a_run_that_lives_too_long() -> None:
    """A run older than max_run_duration is CANCELLED with reason max_run_duration."""
    flow = stemd.Flow("long.flow")

    @flow.step("sleep")
    async def sleep(ctx: stemd.FlowContext) -> None:
        await ctx.sleep(30)  # wakes in time...

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> None:
        await ctx.wait_for_event("long.never")  # ...but this takes too long

    clock = ManualClock(START)
    policy = stemd.CancellationPolicy(max_run_duration=60)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow, policy=policy)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(30)
        await wait_until(lambda: _waiting(app, "long.never", run_id), what="the event wait")
        clock.advance(29)
        assert (await app.wait_for_completion(run_id, timeout=0.05)).timed_out
        clock.advance(1)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.is_cancelled
    assert result.state is not None
    assert result.state.cancel_reason == "max_run_duration"
    assert result.state.policy == policy
    assert result.state.finished_at == START + timedelta(seconds=60)


async def _waiting(app: stemd.App, topic: str, run_id: str) -> bool:
    return run_id in {s.run_id for s in await app.runs_waiting_on(topic)}


async def test_max_run_duration_cancels_a_running_step() -> None:
    """max_run_duration cancels a run whose step still executes; its late result is refused."""
    release = anyio.Event()
    entered = anyio.Event()
    flow = stemd.Flow("busy.flow")

    @flow.step("busy")
    async def busy(ctx: stemd.FlowContext) -> str:
        entered.set()
        await release.wait()
        return "too late"

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(
            flow, policy=stemd.CancellationPolicy(max_run_duration=timedelta(seconds=10))
        )
        await entered.wait()
        clock.advance(10)
        result = await app.wait_for_completion(run_id, timeout=5)
        release.set()
        assert result.is_cancelled
        state = await app.get_run(run_id)
        assert state is not None
        assert state.cancel_reason == "max_run_duration"
        await wait_until(lambda: _no_owner(app, run_id), what="the worker to let go")
        state = await app.get_run(run_id)
        assert state is not None
        assert state.status is RunStatus.CANCELLED
        assert state.result is None
        assert state.checkpoints == {}


async def _no_owner(app: stemd.App, run_id: str) -> bool:
    assert app.pool is not None
    return app.pool.statistics().busy == 0


async def test_max_suspend_duration_cancels_a_run_suspended_too_long() -> None:
    """A run suspended longer than max_suspend_duration is CANCELLED with that reason."""
    flow = _waiting_flow("stuck.flow")
    clock = ManualClock(START)
    policy = stemd.CancellationPolicy(max_suspend_duration=1800)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow, policy=policy)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(1799)
        assert (await app.wait_for_completion(run_id, timeout=0.05)).timed_out
        clock.advance(1)
        result = await app.wait_for_completion(run_id, timeout=5)
        assert await app.runs_waiting_on("stuck.flow.go") == []
        assert await app.emit("stuck.flow.go", 1) == 0
    assert result.is_cancelled
    assert result.state is not None
    assert result.state.cancel_reason == "max_suspend_duration"


async def test_max_suspend_duration_counts_each_suspension_afresh() -> None:
    """The suspend limit applies to each suspension, not to their sum."""
    flow = stemd.Flow("naps.flow")

    @flow.step("naps")
    async def naps(ctx: stemd.FlowContext) -> str:
        for _ in range(3):
            await ctx.sleep(8)
        return "rested"

    clock = ManualClock(START)
    policy = stemd.CancellationPolicy(max_suspend_duration=10)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow, policy=policy)
        for n in range(1, 4):
            await wait_until(
                _resume_at,
                app,
                run_id,
                START + timedelta(seconds=8 * n),
                what=f"nap {n}",
            )
            clock.advance(8)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "rested"


async def _resume_at(app: stemd.App, run_id: str, when: datetime) -> bool:
    state = await app.get_run(run_id)
    return state is not None and state.status is RunStatus.SUSPENDED and state.resume_at == when


async def test_policy_does_not_touch_a_run_that_ends_in_time() -> None:
    """A run that completes before its limits stays COMPLETED when they pass."""
    flow = _waiting_flow("quick.flow")
    clock = ManualClock(START)
    policy = stemd.CancellationPolicy(max_run_duration=60, max_suspend_duration=30)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow, policy=policy)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        await app.emit("quick.flow.go", "done")
        assert (await app.wait_for_completion(run_id, timeout=5)).is_completed
        clock.advance(120)
        assert await app.engine.fire_timer(run_id) == "none"
        state = await app.get_run(run_id)
    assert state is not None
    assert state.status is RunStatus.COMPLETED
    assert state.cancel_reason is None


async def test_ttl_deletes_an_ended_run() -> None:
    """A run started with ttl is deleted that long after it ended; without ttl it stays."""
    flow = _waiting_flow("ttl.flow")
    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        short = await app.start_workflow(flow, ttl=timedelta(hours=1))
        kept = await app.start_workflow(flow)
        for run_id in (short, kept):
            await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(7200)  # time spent before ending does not count
        assert await app.emit("ttl.flow.go", None) == 2
        for run_id in (short, kept):
            assert (await app.wait_for_completion(run_id, timeout=5)).is_completed
        clock.advance(3599)
        assert (await app.wait_for_completion(short, timeout=0.05)).is_completed
        clock.advance(1)
        await wait_until(lambda: _gone(app, short), what="the run to be deleted")
        assert await app.get_run(short) is None
        assert [s.run_id for s in await app.list_runs()] == [kept]
        assert await app.get_run(kept) is not None


async def _gone(app: stemd.App, run_id: str) -> bool:
    return await app.get_run(run_id) is None


async def test_ttl_applies_to_failed_and_cancelled_runs() -> None:
    """Retention deletes runs that failed or were cancelled as well."""
    flow = stemd.Flow("ttl-fail.flow")

    @flow.step("boom")
    async def boom(ctx: stemd.FlowContext) -> None:
        raise RuntimeError("x")

    waiting = _waiting_flow("ttl-cancel.flow")
    clock = ManualClock(START)
    async with open_app(flow, waiting, clock=clock) as app:
        failed = await app.start_workflow(flow, ttl=10)
        cancelled = await app.start_workflow(waiting, ttl=10)
        assert (await app.wait_for_completion(failed, timeout=5)).is_failed
        await wait_status(app, cancelled, RunStatus.SUSPENDED)
        assert await app.cancel_run(cancelled, reason="operator")
        clock.advance(10)
        for run_id in (failed, cancelled):
            await wait_until(_gone, app, run_id, what=f"{run_id} to be deleted")


def test_policy_and_ttl_reject_bad_durations() -> None:
    """Durations must be non-negative seconds or timedeltas."""
    with pytest.raises(ValueError, match="max_run_duration must not be negative"):
        stemd.CancellationPolicy(max_run_duration=-1)
    with pytest.raises(TypeError):
        stemd.CancellationPolicy(max_suspend_duration="10")  # type: ignore[arg-type]
    policy = stemd.CancellationPolicy(max_run_duration=timedelta(minutes=2))
    assert policy.max_run_duration == 120.0
