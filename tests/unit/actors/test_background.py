"""The sweeper, the timer and the worker pool, seen through an App on a memory store."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

import stemd
from stemd._model import RunStatus
from stemd._store.base import Claim, RunRecord, Suspend, compute_timer_at
from stemd._store.memory import MemoryStore
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

START = datetime(2030, 1, 1, tzinfo=UTC)


def _flow(name: str, calls: Counter[str]) -> stemd.Flow:
    flow = stemd.Flow(name)

    @flow.step("only")
    async def only(ctx: stemd.FlowContext) -> str:
        calls[ctx.run_id] += 1
        return "done"

    return flow


def _record(run_id: str, workflow: str, now: datetime) -> RunRecord:
    rec = RunRecord(
        run_id=run_id,
        workflow=workflow,
        status=RunStatus.PENDING,
        params=b"null",
        created_at=now,
        updated_at=now,
    )
    rec.timer_at = compute_timer_at(rec)
    return rec


async def test_sweeper_enqueues_runs_nobody_enqueued() -> None:
    """Runnable runs written without an enqueue (a crash before it) are found and run."""
    calls = Counter[str]()
    flow = _flow("swept.flow", calls)
    store = MemoryStore()
    for i in range(3):
        await store.create_run(_record(f"orphan-{i}", "swept.flow", START))
    async with open_app(flow, store=store, clock=ManualClock(START)) as app:
        for i in range(3):
            assert (await app.wait_for_completion(f"orphan-{i}", timeout=5)).is_completed
        assert app.sweeper is not None
        stats = app.sweeper.statistics()
    assert stats.sweeps >= 1
    assert stats.requeued >= 3
    assert calls == {f"orphan-{i}": 1 for i in range(3)}


async def test_sweeper_picks_up_runs_made_runnable_elsewhere() -> None:
    """A run another process made runnable is executed at the next sweep."""
    calls = Counter[str]()
    flow = _flow("elsewhere.flow", calls)
    store = MemoryStore()
    clock = ManualClock(START)
    async with open_app(
        flow,
        store=store,
        clock=clock,
        options=stemd.AppOptions(timing=stemd.Timing(sweep_interval=5)),
    ) as app:
        await store.create_run(_record("late", "elsewhere.flow", START))  # not enqueued
        result = await app.wait_for_completion("late", timeout=0.05)
        assert result.timed_out
        clock.advance(5)
        assert (await app.wait_for_completion("late", timeout=5)).is_completed
    assert calls == {"late": 1}


async def test_sweeper_leaves_live_leases_alone() -> None:
    """A run whose lease is live is not swept, however many sweeps pass."""
    store = MemoryStore()
    await store.create_run(_record("held", "held.flow", START))
    claim = await store.claim("held", "other-process", START, 1000)
    assert claim is not None
    clock = ManualClock(START)
    calls = Counter[str]()
    async with open_app(_flow("held.flow", calls), store=store, clock=clock) as app:
        assert app.sweeper is not None
        for _ in range(5):
            clock.advance(100)
            assert await app.sweeper.sweep() == 0
        rec = await store.get_run("held")
    assert rec is not None
    assert rec.lease_owner == "other-process"
    assert calls == {}


async def _suspend_elsewhere(store: MemoryStore, run_id: str, wake: datetime) -> Claim:
    claim = await store.claim(run_id, "other-process", START, 30)
    assert claim is not None
    await store.commit(run_id, claim.token, Suspend(resume_at=wake), START)
    return claim


async def test_timer_wakes_runs_suspended_by_another_process() -> None:
    """The timer refills from the store: a sleep committed elsewhere is woken on time."""
    calls = Counter[str]()
    flow = _flow("elsewhere-sleep.flow", calls)
    store = MemoryStore()
    clock = ManualClock(START)
    async with open_app(flow, store=store, clock=clock) as app:
        await store.create_run(_record("sleeper", "elsewhere-sleep.flow", START))
        await _suspend_elsewhere(store, "sleeper", START + timedelta(seconds=3))
        clock.advance(3)  # before the timer's next refill: it does not know yet
        assert (await app.wait_for_completion("sleeper", timeout=0.05)).timed_out
        clock.advance(2)  # its refill interval (5 s) has passed
        assert (await app.wait_for_completion("sleeper", timeout=5)).is_completed
    assert calls == {"sleeper": 1}


async def test_timer_wakes_many_sleepers_in_order() -> None:
    """Runs sleeping for different durations each resume once their own time is up."""
    order: list[int] = []
    flow = stemd.Flow("many-sleeps.flow")

    @flow.step("nap")
    async def nap(ctx: stemd.FlowContext) -> None:
        await ctx.sleep(ctx.params)
        order.append(ctx.params)

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        durations = [50, 10, 40, 20, 30]
        ids = {d: await app.start_workflow(flow, params=d) for d in durations}
        for run_id in ids.values():
            await wait_status(app, run_id, RunStatus.SUSPENDED)
        for t in (10, 20, 30, 40, 50):
            clock.advance(10)
            await wait_status(app, ids[t], RunStatus.COMPLETED)
            for later in (d for d in durations if d > t):
                state = await app.get_run(ids[later])
                assert state is not None
                assert state.status is RunStatus.SUSPENDED
        assert app.timer is not None
        assert app.timer.statistics().fired >= 5
    assert order == [10, 20, 30, 40, 50]


async def test_timer_schedules_a_wake_up_earlier_than_the_one_it_sleeps_on() -> None:
    """A new, earlier wake-up interrupts the timer's sleep on a later one."""
    flow = stemd.Flow("earlier.flow")

    @flow.step("nap")
    async def nap(ctx: stemd.FlowContext) -> None:
        await ctx.sleep(ctx.params)

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        late = await app.start_workflow(flow, params=1000)
        await wait_status(app, late, RunStatus.SUSPENDED)
        early = await app.start_workflow(flow, params=1)
        await wait_status(app, early, RunStatus.SUSPENDED)
        clock.advance(1)
        assert (await app.wait_for_completion(early, timeout=5)).is_completed
        state = await app.get_run(late)
    assert state is not None
    assert state.status is RunStatus.SUSPENDED


async def test_worker_pool_runs_up_to_its_concurrency() -> None:
    """The pool executes at most `concurrency` runs at once, and all of them in the end."""
    running = 0
    peak = 0
    gate = anyio.Event()
    flow = stemd.Flow("pool.flow")

    @flow.step("only")
    async def only(ctx: stemd.FlowContext) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    async with open_app(flow, concurrency=3) as app:
        ids = [await app.start_workflow(flow) for _ in range(7)]
        await wait_until(_busy, app, 3, what="three busy workers")
        assert app.pool is not None
        assert app.pool.statistics().busy == 3
        gate.set()
        for run_id in ids:
            assert (await app.wait_for_completion(run_id, timeout=5)).is_completed
        stats = app.pool.statistics()
    assert peak == 3
    assert stats.concurrency == 3
    assert stats.slices >= 7


async def _busy(app: stemd.App, n: int) -> bool:
    assert app.pool is not None
    return app.pool.statistics().busy >= n


class FlakyStore(MemoryStore):
    """A memory store whose next ``failures`` claims raise, as a broken database would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def claim(self, run_id: str, owner: str, now: datetime, lease: float) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise stemd.StoreError("database is locked")
        return await super().claim(run_id, owner, now, lease)


async def test_worker_survives_a_failing_store_call() -> None:
    """A store error in one slice does not kill the worker: the run is retried and done
    (the run naps first: started where a worker waits, it is created claimed, and the
    claim that fails is the one after its nap)."""
    calls = Counter[str]()
    flow = stemd.Flow("flaky-store.flow")

    @flow.step("nap")
    async def nap(ctx: stemd.FlowContext) -> None:
        await ctx.sleep(0.01)

    @flow.step("only")
    async def only(ctx: stemd.FlowContext) -> str:
        calls[ctx.run_id] += 1
        return "done"

    store = FlakyStore(failures=1)
    async with open_app(flow, store=store, concurrency=1) as app:
        run_id = await app.start_workflow(flow)
        result = await app.wait_for_completion(run_id, timeout=5)
        assert app.pool is not None
        stats = app.pool.statistics()
    assert result.is_completed
    assert calls == {run_id: 1}
    assert stats.errors == 1


async def test_local_broker_nak_requeues_after_the_delay_without_blocking() -> None:
    """A naked local delivery comes back after its delay; nak itself returns at once."""
    import time

    from stemd._broker.local import LocalBroker

    broker = LocalBroker()
    await broker.enqueue("r1", "q")
    delivery = await broker.receive("q")
    started = time.monotonic()
    with anyio.fail_after(0.05):
        await delivery.nak(0.2)
    with anyio.fail_after(5):
        again = await broker.receive("q")
    assert again.run_id == "r1"
    assert time.monotonic() - started >= 0.19


async def test_timer_sleeps_until_an_instant_so_clock_moves_cannot_delay_it() -> None:
    """The timer sleeps until an instant, not for a duration: time that passes between
    computing the wake-up and starting to sleep does not push the wake-up later."""
    clock = ManualClock()
    async with open_app(clock=clock) as app:
        assert app.timer is not None
        until = clock.now() + timedelta(seconds=10)
        clock.advance(10)  # the clock moves before the timer starts to sleep
        with anyio.fail_after(1):
            await app.timer._sleep_until(until)
        later = clock.now() + timedelta(seconds=5)
        async with anyio.create_task_group() as tg:
            tg.start_soon(app.timer._sleep_until, later)
            await anyio.wait_all_tasks_blocked()
            clock.advance(5)
        with anyio.fail_after(1):
            await clock.sleep_until(later)
