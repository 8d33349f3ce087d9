"""Events delivered exactly once under sweeps and re-waits: the reproduction of the
doubled delivery on the JetStream KV store. An emit used to resume the waiters in batches
of 1,000 and enqueue them only at the end; the sweeper enqueued resumed runs meanwhile,
they waited again, and the next batch gave them the same payload (the first emit to 1,500
runs reported up to 3,000 resumed, and runs ended with ["first", "first"])."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._model import RunStatus
from tests.helpers import wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

RUNS = 1500


@stemd.script("once.twice")
async def twice(ctx: stemd.ScriptContext) -> list[str]:
    """Waits twice on the same topic; returns both payloads."""
    first = await ctx.wait_for_event("once.go")
    second = await ctx.wait_for_event("once.go")
    return [first, second]


async def test_an_emit_never_delivers_twice_to_runs_that_wait_again(nats: NatsServer) -> None:
    """1,500 runs waiting twice on one topic (KV store, sweeps every 0.1 s): the first emit
    resumes each exactly once, and every run ends with ["first", "second"]."""
    async with stemd.App(
        store=nats.url,
        workflows=[twice],
        concurrency=64,
        options=stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.1)),
    ) as app:
        ids = [f"once-{i}" for i in range(RUNS)]

        async def start(part: list[str]) -> None:
            for run_id in part:
                await app.start_workflow(twice, run_id=run_id)

        async with anyio.create_task_group() as tg:
            for chunk in range(0, RUNS, 100):
                tg.start_soon(start, ids[chunk : chunk + 100])

        async def all_waiting() -> bool:
            page = await app.store.page_runs(status=RunStatus.SUSPENDED, limit=RUNS)
            return len(page.records) == RUNS

        await wait_until(all_waiting, timeout=120, what="every run to wait")
        assert await app.emit("once.go", "first") == RUNS
        # No polling: the runs not yet back at their wait take "second" when they get there.
        await app.emit("once.go", "second")
        results = {}
        with anyio.fail_after(120):
            for run_id in ids:
                done = await app.wait_for_completion(run_id, timeout=120)
                results[run_id] = done.value
        assert [r for r, v in results.items() if v == ["first", "first"]] == []
        assert all(v == ["first", "second"] for v in results.values())


@stemd.script("once.many")
async def many(ctx: stemd.ScriptContext, waits: int) -> list[str]:
    """Waits ``waits`` times on one topic; returns the payloads in order."""
    return [await ctx.wait_for_event("once.many") for _ in range(waits)]


@pytest.mark.parametrize("kind", ["sqlite", "jetstream"])
async def test_two_daemons_emitting_at_once_give_each_event_once_in_order(
    kind: str, nats: NatsServer, tmp_path: Path
) -> None:
    """Two daemons on one store (SQLite file, JetStream bucket), each executing runs and
    emitting 10 events while the other does: 200 runs each take all 20, once, in one order."""
    url = f"sqlite:///{tmp_path / 'two.db'}" if kind == "sqlite" else nats.url
    options: dict[str, Any] = {
        "workflows": [many],
        "concurrency": 16,
        "options": stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.05)),
    }
    async with stemd.App(store=url, **options) as a, stemd.App(store=url, **options) as b:
        ids = [await a.start_workflow(many, 20, run_id=f"two-{i}") for i in range(200)]

        async def emit(app: stemd.App, name: str) -> None:
            for k in range(10):
                await app.emit("once.many", f"{name}{k}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(emit, a, "a")
            tg.start_soon(emit, b, "b")
        results = []
        with anyio.fail_after(120):
            for run_id in ids:
                done = await b.wait_for_completion(run_id, timeout=120)
                assert done.is_completed, done
                results.append(done.value)
    assert sorted(results[0]) == sorted([f"a{k}" for k in range(10)] + [f"b{k}" for k in range(10)])
    assert all(r == results[0] for r in results)
