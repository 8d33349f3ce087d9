"""Many runs at once: every run completes, every step executes exactly once."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

import stemd
from stemd._codec import codec_for
from stemd._engine.engine import Engine
from stemd._store.base import Suspend
from stemd._store.memory import MemoryStore
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
RUNS = 1000


async def _count(app: stemd.App, status: RunStatus) -> int:
    return len(await app.store.list_runs(status=status, limit=RUNS * 2))


async def _waiters(app: stemd.App, topic: str) -> int:
    return len(await app.store.runs_waiting_on(topic, limit=RUNS * 2))


def _bulk_flow(
    entered: Counter[tuple[str, str]], completed: Counter[tuple[str, str]], nap: float
) -> stemd.Flow:
    flow = stemd.Flow("bulk.flow")

    @flow.step("reserve")
    async def reserve(ctx: stemd.FlowContext) -> int:
        entered[ctx.run_id, "reserve"] += 1
        await ctx.sleep(nap)
        completed[ctx.run_id, "reserve"] += 1
        return int(ctx.params["n"])

    @flow.step("approve")
    async def approve(ctx: stemd.FlowContext) -> Any:
        entered[ctx.run_id, "approve"] += 1
        decision = await ctx.wait_for_event(ctx.params["topic"])
        completed[ctx.run_id, "approve"] += 1
        return {"n": ctx.previous_result, "by": decision["by"]}

    @flow.step("ship")
    async def ship(ctx: stemd.FlowContext) -> str:
        entered[ctx.run_id, "ship"] += 1
        completed[ctx.run_id, "ship"] += 1
        return f"{ctx.previous_result['n']}:{ctx.previous_result['by']}"

    return flow


def _check_counts(
    ids: list[str], entered: Counter[tuple[str, str]], completed: Counter[tuple[str, str]]
) -> None:
    steps = ("reserve", "approve", "ship")
    assert completed == Counter({(i, s): 1 for i in ids for s in steps})
    # The sleeping and the waiting step are each entered twice (before and after their
    # suspension), the last step once.
    assert entered == Counter({(i, s): 2 if s != "ship" else 1 for i in ids for s in steps})


@pytest.mark.slow
async def test_a_thousand_runs_under_a_manual_clock() -> None:
    """1,000 runs with a durable sleep and an event wait all complete, each step once."""
    entered: Counter[tuple[str, str]] = Counter()
    completed: Counter[tuple[str, str]] = Counter()
    flow = _bulk_flow(entered, completed, nap=30)
    clock = ManualClock()
    with anyio.fail_after(60):
        async with open_app(flow, clock=clock, concurrency=64) as app:
            params = [{"n": n, "topic": "bulk.approve"} for n in range(RUNS)]
            ids = [
                await app.start_workflow(flow, params=p, run_id=f"bulk-{p['n']}") for p in params
            ]
            await wait_until(_all, app, RunStatus.SUSPENDED, timeout=30, what="every sleep")
            clock.advance(30)
            await wait_until(_all_waiting, app, "bulk.approve", timeout=30, what="every wait")
            assert await app.emit("bulk.approve", {"by": "ops"}) == RUNS
            results = [await app.wait_for_completion(i, timeout=30) for i in ids]
            assert await _count(app, RunStatus.COMPLETED) == RUNS
            assert await app.emit("bulk.approve", {"by": "late"}) == 0
    assert [r.status for r in results] == [RunStatus.COMPLETED] * RUNS
    assert [r.value for r in results] == [f"{n}:ops" for n in range(RUNS)]
    _check_counts(ids, entered, completed)


@pytest.mark.slow
async def test_a_thousand_runs_in_real_time_with_racing_emits() -> None:
    """1,000 real-time runs, each resumed by its own racing emit, complete each step once."""
    entered: Counter[tuple[str, str]] = Counter()
    completed: Counter[tuple[str, str]] = Counter()
    flow = _bulk_flow(entered, completed, nap=0.05)
    emitted: dict[str, int] = {}

    async def emitter(app: stemd.App) -> None:
        while len(emitted) < RUNS:
            for rec in await app.store.list_runs(status=RunStatus.SUSPENDED, limit=RUNS):
                topic = rec.wait_topic
                if topic is not None and topic not in emitted:
                    emitted[topic] = await app.emit(topic, {"by": topic})
            await anyio.sleep(0.005)

    with anyio.fail_after(60):
        async with open_app(flow, concurrency=64) as app, anyio.create_task_group() as tg:
            tg.start_soon(emitter, app)
            ids = []
            for n in range(RUNS):
                params = {"n": n, "topic": f"bulk.approve.{n}"}
                ids.append(await app.start_workflow(flow, params=params, run_id=f"rt-{n}"))
            results = [await app.wait_for_completion(i, timeout=30) for i in ids]
    assert [r.value for r in results] == [f"{n}:bulk.approve.{n}" for n in range(RUNS)]
    assert emitted == {f"bulk.approve.{n}": 1 for n in range(RUNS)}
    _check_counts(ids, entered, completed)


async def _all(app: stemd.App, status: RunStatus) -> bool:
    return await _count(app, status) == RUNS


async def _all_waiting(app: stemd.App, topic: str) -> bool:
    return await _waiters(app, topic) == RUNS


async def test_emit_resumes_every_waiter_beyond_one_store_batch() -> None:
    """Emit delivers to every waiter of the topic, however many there are, each once."""
    store = MemoryStore()
    clock = ManualClock()
    flow = stemd.Flow("batch.flow")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event("batch.go")

    engine = Engine(
        store=store,
        broker=None,
        codec=codec_for("json"),
        clock=clock,
        workflows={flow.name: flow},
        owner="test",
    )
    waiters = 2500
    for n in range(waiters):
        run_id, _ = await engine.start_run(flow, run_id=f"w-{n}")
        claim = await store.claim(run_id, "test", clock.now(), 30)
        assert claim is not None
        suspend = Suspend(wait_topic="batch.go", wait_key="wait@event#0")
        await store.commit(run_id, claim.token, suspend, clock.now())
    assert await engine.emit("batch.go", "go") == waiters
    assert await store.runs_waiting_on("batch.go") == []
    assert len(await store.runnable(clock.now(), waiters * 2)) == waiters
    assert await engine.emit("batch.go", "again") == 0
