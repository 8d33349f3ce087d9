"""Leases and fencing: a worker that lost its run can never write to it (architecture:
"it can never lose or fork it")."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import anyio
import pytest

import stemd
from stemd._codec import codec_for
from stemd._engine.engine import Engine
from stemd._store.base import Checkpoint
from stemd._store.memory import MemoryStore
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
START = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = 30.0


def _engine(store: MemoryStore, clock: ManualClock, owner: str, *flows: stemd.Flow) -> Engine:
    return Engine(
        store=store,
        broker=None,
        codec=codec_for("json"),
        clock=clock,
        workflows={f.name: f for f in flows},
        owner=owner,
        lease=LEASE,
    )


async def test_stale_worker_cannot_write_after_a_takeover() -> None:
    """After a takeover on lease expiry, the stale worker's checkpoint and commit are refused."""
    gate = anyio.Event()
    entered = anyio.Event()
    calls = Counter[str]()
    flow = stemd.Flow("fenced.flow")

    @flow.step("work")
    async def work(ctx: stemd.FlowContext) -> str:
        calls["work"] += 1
        if calls["work"] == 1:
            entered.set()
            await gate.wait()
            return "stale"
        return "fresh"

    @flow.step("finish")
    async def finish(ctx: stemd.FlowContext) -> str:
        calls["finish"] += 1
        return f"finished after {ctx.previous_result}"

    store = MemoryStore()
    # Each worker reads its own clock: the first one's stands still, so it never renews
    # (a paused process); the second one's is past the first one's lease.
    clock_a = ManualClock(START)
    clock_b = ManualClock(START)
    worker_a = _engine(store, clock_a, "worker-a", flow)
    worker_b = _engine(store, clock_b, "worker-b", flow)
    run_id, _ = await worker_a.start_run(flow)
    outcomes: dict[str, object] = {}

    async def run_a() -> None:
        outcomes["a"] = await worker_a.advance(run_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_a)
        await entered.wait()
        assert await worker_b.advance(run_id) is None  # the lease is still live
        clock_b.advance(LEASE + 1)
        taken = await worker_b.advance(run_id)
        assert taken is not None
        assert taken.status is RunStatus.COMPLETED
        gate.set()
    assert outcomes["a"] is None
    rec = await store.get_run(run_id)
    assert rec is not None
    assert rec.status is RunStatus.COMPLETED
    assert rec.attempts == 2
    assert rec.result == b'"finished after fresh"'
    assert {c.name: c.value for c in await store.get_checkpoints(run_id)} == {
        "work": b'"fresh"',
        "finish": b'"finished after fresh"',
    }
    assert calls == {"work": 2, "finish": 1}


async def test_stale_worker_cannot_suspend_a_run_taken_over() -> None:
    """A stale worker cannot suspend (park) a run another worker has completed."""
    gate = anyio.Event()
    entered = anyio.Event()
    calls = Counter[str]()
    flow = stemd.Flow("fenced-suspend.flow")

    @flow.step("only")
    async def only(ctx: stemd.FlowContext) -> str:
        calls["only"] += 1
        if calls["only"] == 1:
            entered.set()
            await gate.wait()
            await ctx.wait_for_event("fenced.never")
        return "done"

    store = MemoryStore()
    clock_a, clock_b = ManualClock(START), ManualClock(START + timedelta(seconds=LEASE + 1))
    worker_a = _engine(store, clock_a, "worker-a", flow)
    worker_b = _engine(store, clock_b, "worker-b", flow)
    run_id, _ = await worker_a.start_run(flow)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker_a.advance, run_id)
        await entered.wait()
        assert (await worker_b.advance(run_id)) is not None
        gate.set()
    rec = await store.get_run(run_id)
    assert rec is not None
    assert rec.status is RunStatus.COMPLETED
    assert await store.runs_waiting_on("fenced.never") == []


async def test_live_lease_keeps_a_long_step_its_own() -> None:
    """A step longer than the lease keeps its run: renewed, and no one else can claim it."""
    gate = anyio.Event()
    entered = anyio.Event()
    flow = stemd.Flow("long-step.flow")

    @flow.step("long")
    async def long(ctx: stemd.FlowContext) -> str:
        entered.set()
        await gate.wait()
        return "mine"

    store = MemoryStore()
    clock = ManualClock(START)
    worker_a = _engine(store, clock, "worker-a", flow)
    worker_b = _engine(store, clock, "worker-b", flow)
    run_id, _ = await worker_a.start_run(flow)
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker_a.advance, run_id)
        await entered.wait()
        for _ in range(6):  # 60 s in all, the lease is 30 s: renewals every 10 s
            clock.advance(LEASE / 3)
            await wait_until(_renewed, store, run_id, clock, what="the lease renewal")
            assert await worker_b.advance(run_id) is None
        gate.set()
    rec = await store.get_run(run_id)
    assert rec is not None
    assert rec.status is RunStatus.COMPLETED
    assert rec.attempts == 1


async def _renewed(store: MemoryStore, run_id: str, clock: ManualClock) -> bool:
    rec = await store.get_run(run_id)
    assert rec is not None
    return rec.lease_expires_at == clock.now() + timedelta(seconds=LEASE)


async def test_worker_that_loses_its_lease_stops_its_slice() -> None:
    """A worker finding its lease gone at renewal cancels its step and writes nothing."""
    entered = anyio.Event()
    cancelled = anyio.Event()
    flow = stemd.Flow("lost.flow")

    @flow.step("long")
    async def long(ctx: stemd.FlowContext) -> str:
        entered.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        return "never"

    store = MemoryStore()
    clock = ManualClock(START)
    worker = _engine(store, clock, "worker-a", flow)
    run_id, _ = await worker.start_run(flow)
    result: dict[str, object] = {}

    async def run() -> None:
        result["a"] = await worker.advance(run_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await entered.wait()
        assert await store.cancel(run_id, "operator", clock.now()) is not None
        clock.advance(LEASE / 3)
        with anyio.fail_after(5):
            await cancelled.wait()
    assert result["a"] is None
    rec = await store.get_run(run_id)
    assert rec is not None
    assert rec.status is RunStatus.CANCELLED
    assert await store.get_checkpoints(run_id) == []


async def test_app_takes_over_a_run_whose_worker_died() -> None:
    """A dead worker's run is taken over after its lease expires; done steps are not re-run."""
    calls = Counter[str]()
    flow = stemd.Flow("orphan.flow")

    @flow.step("a")
    async def a(ctx: stemd.FlowContext) -> str:
        calls["a"] += 1
        return "A"

    @flow.step("b")
    async def b(ctx: stemd.FlowContext) -> str:
        calls["b"] += 1
        return ctx.previous_result + "B"

    store = MemoryStore()
    clock = ManualClock(START)
    dead = _engine(store, clock, "dead", flow)
    run_id, _ = await dead.start_run(flow)
    # The dead worker claimed the run and recorded step "a", then vanished.
    claim = await store.claim(run_id, "dead", clock.now(), LEASE)
    assert claim is not None
    await store.save_checkpoint(run_id, claim.token, Checkpoint("a", b'"A"'), clock.now())
    async with open_app(
        flow, store=store, clock=clock, options=stemd.AppOptions(timing=stemd.Timing(lease=LEASE))
    ) as app:
        result = await app.wait_for_completion(run_id, timeout=0.05)
        assert result.timed_out
        assert result.status is RunStatus.RUNNING
        clock.advance(LEASE + 1)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "AB"
    assert calls == {"b": 1}
    assert result.state is not None
    assert result.state.attempts == 2


async def test_one_run_is_executed_by_one_worker_at_a_time() -> None:
    """Many workers handed the same run at once: only one executes it."""
    entered = Counter[str]()
    gate = anyio.Event()
    flow = stemd.Flow("single.flow")

    @flow.step("only")
    async def only(ctx: stemd.FlowContext) -> str:
        entered["only"] += 1
        await gate.wait()
        return "done"

    store = MemoryStore()
    clock = ManualClock(START)
    workers = [_engine(store, clock, f"w{i}", flow) for i in range(5)]
    run_id, _ = await workers[0].start_run(flow)
    results: list[object] = []

    async def advance(engine: Engine) -> None:
        results.append(await engine.advance(run_id))

    async with anyio.create_task_group() as tg:
        for engine in workers:
            tg.start_soon(advance, engine)
        await wait_until(_count_at_least, results, 4, what="four refusals")
        gate.set()
    assert entered == {"only": 1}
    assert sum(r is not None for r in results) == 1


async def _count_at_least(items: list[object], n: int) -> bool:
    return len(items) >= n


async def test_shutdown_mid_step_gives_the_run_back() -> None:
    """Closing an app while a step executes releases the run at once (no lease wait)."""
    entered = anyio.Event()
    flow = stemd.Flow("shutdown.flow")

    @flow.step("hang")
    async def hang(ctx: stemd.FlowContext) -> None:
        entered.set()
        await anyio.sleep_forever()

    store = MemoryStore()
    async with open_app(flow, store=store) as app:
        run_id = await app.start_workflow(flow)
        await entered.wait()
        await wait_status(app, run_id, RunStatus.RUNNING)
    rec = await store.get_run(run_id)
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert rec.lease_owner is None


async def test_two_apps_on_one_store_execute_each_step_once() -> None:
    """Two apps racing on one store complete every run, each step of each run exactly once."""
    completed: Counter[tuple[str, str]] = Counter()
    flow = stemd.Flow("shared.flow")

    @flow.step("nap")
    async def nap(ctx: stemd.FlowContext) -> None:
        await ctx.sleep(10)
        completed[ctx.run_id, "nap"] += 1

    @flow.step("done")
    async def done(ctx: stemd.FlowContext) -> str:
        completed[ctx.run_id, "done"] += 1
        return ctx.run_id

    store = MemoryStore()
    clock = ManualClock(START)
    async with (
        open_app(
            flow,
            store=store,
            clock=clock,
            options=stemd.AppOptions(timing=stemd.Timing(sweep_interval=1)),
        ) as one,
        open_app(
            flow,
            store=store,
            clock=clock,
            options=stemd.AppOptions(timing=stemd.Timing(sweep_interval=1)),
        ) as two,
    ):
        ids = [await (one if n % 2 else two).start_workflow(flow) for n in range(100)]
        for run_id in ids:
            await wait_status(one, run_id, RunStatus.SUSPENDED)
        clock.advance(10)
        results = [await two.wait_for_completion(run_id, timeout=10) for run_id in ids]
    assert [r.value for r in results] == ids
    assert completed == Counter({(i, s): 1 for i in ids for s in ("nap", "done")})


async def test_a_run_of_a_workflow_unknown_here_waits_for_a_process_that_knows_it() -> None:
    """A process that does not know a run's workflow does not fail it (that would lose it,
    say in a rolling deploy that adds the workflow): it gives the run back, to be tried
    again after 1 s, 2 s, 4 s..., and a process that knows the workflow runs it."""
    flow = stemd.Flow("added.flow")

    @flow.step("only")
    async def only(ctx: stemd.FlowContext) -> str:
        return "ran"

    store = MemoryStore()
    clock = ManualClock(START)
    client = _engine(store, clock, "client")
    client.accept_unknown = True  # a client of another code base
    old = _engine(store, clock, "old-daemon")
    new = _engine(store, clock, "new-daemon", flow)
    run_id, _ = await client.start_run("added.flow", run_id="r1")
    for tries, delay in [(1, 1.0), (2, 2.0), (3, 4.0)]:
        rec = await old.advance(run_id)
        assert rec is not None
        assert rec.status is RunStatus.SUSPENDED
        assert rec.error is not None
        assert (rec.error.code, rec.error.attempts) == ("unknown_workflow", tries)
        assert (rec.attempt_step, rec.step_failures) == (None, 0)  # no step failed
        assert rec.resume_at == clock.now() + timedelta(seconds=delay)
        assert rec.error is not None
        assert rec.error.type == "UnknownWorkflow"
        assert "old-daemon" in rec.error.message
        assert await old.advance(run_id) is None  # not before its time
        clock.advance(delay)
        assert await store.due_timers(clock.now(), 10) == [(rec.resume_at, run_id)]
        assert await old.fire_timer(run_id) == "woken"
    done = await new.advance(run_id)
    assert done is not None
    assert done.status is RunStatus.COMPLETED
    assert done.result == b'"ran"'
    assert await store.get_checkpoints(run_id) != []


async def test_the_wait_for_an_unknown_workflow_is_at_most_a_minute() -> None:
    """Tries of a workflow no process knows go on a minute apart at most."""
    store = MemoryStore()
    clock = ManualClock(START)
    engine = _engine(store, clock, "daemon")
    engine.accept_unknown = True
    run_id, _ = await engine.start_run("nobody.flow")
    delays = []
    for _ in range(9):
        rec = await engine.advance(run_id)
        assert rec is not None
        assert rec.resume_at is not None
        delays.append((rec.resume_at - clock.now()).total_seconds())
        clock.advance(delays[-1])
        assert await engine.fire_timer(run_id) == "woken"
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
