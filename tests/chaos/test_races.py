"""Races between the transitions of one run, on every store, with the racing parties in
separate Apps (separate connections) where the store is shared: an emit against the
event's timeout, a cancel against the run's completion, two emitters against each other.
Each run ends in exactly one consistent state, and what each party was told matches it."""

from __future__ import annotations

import contextlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._store.memory import MemoryStore
from tests.chaos.harness import chaos_rng, scale
from tests.helpers import wait_status, wait_until
from tests.stores import shared_nats_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(scale(120, 900))]

RUNS = scale(40, 400)
# An event wait's timeout: longer than it takes to start every run and see it waiting.
WAIT = scale(1.0, 8.0)
KINDS = ["memory", "sqlite", "jetstream"]


@stemd.script("race.wait")
async def wait_event(ctx: stemd.ScriptContext, params: dict[str, Any]) -> Any:
    """Waits for its event with a timeout."""
    try:
        got = await ctx.wait_for_event(params["topic"], timeout=params["timeout"])
    except stemd.EventTimeout:
        return "timeout"
    return {"got": got}


async def busy(seconds: float) -> str:
    """Sleep ``seconds``, then return ``"done"``."""
    await anyio.sleep(seconds)
    return "done"


@stemd.script("race.work")
async def work(ctx: stemd.ScriptContext, params: dict[str, Any]) -> str:
    """A step, a durable sleep, a step: a cancel may land in any of them."""
    await ctx.step("a", busy, params["a"])
    await ctx.sleep(params["sleep"])
    await ctx.step("b", busy, params["b"])
    return "finished"


WORKFLOWS = [wait_event, work]


@contextlib.asynccontextmanager
async def apps(kind: str, tmp: Path) -> AsyncIterator[tuple[stemd.App, stemd.App, stemd.App]]:
    """A worker App and two client Apps on one store of ``kind`` (one App for memory,
    which no other App can share)."""
    if kind == "memory":
        async with stemd.App(
            store=MemoryStore(),
            workflows=WORKFLOWS,
            options=stemd.AppOptions(timing=stemd.Timing(lease=2.0)),
        ) as app:
            yield app, app, app
        return
    broker: str | None = None
    if kind == "sqlite":
        store = f"sqlite:///{tmp / 'stemd.db'}"
    else:
        server = await shared_nats_server()
        store = f"{server.url}?bucket=race{secrets.token_hex(4)}"
        broker = f"{server.url}?stream=RACE{secrets.token_hex(4)}&prefix=r{secrets.token_hex(4)}"
    async with (
        stemd.App(
            store=store,
            broker=broker,
            workflows=WORKFLOWS,
            options=stemd.AppOptions(timing=stemd.Timing(lease=2.0)),
        ) as worker,
        stemd.App(store=store, broker=broker, workers=False) as one,
        stemd.App(store=store, broker=broker, workers=False) as two,
    ):
        yield worker, one, two


async def all_suspended(app: stemd.App, ids: list[str]) -> dict[str, stemd.RunState]:
    """Wait until each of ``ids`` is suspended; return their states."""
    return {
        run_id: await wait_status(app, run_id, stemd.RunStatus.SUSPENDED, timeout=60)
        for run_id in ids
    }


async def claimed(app: stemd.App, run_id: str) -> bool:
    """Whether ``run_id`` has been claimed at least once."""
    state = await app.get_run(run_id)
    return state is not None and state.attempts >= 1


async def sleep_until(at: datetime) -> None:
    """Sleep until the wall-clock instant ``at`` (not at all if it is past)."""
    await anyio.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()))


@pytest.mark.parametrize("kind", KINDS)
async def test_emit_racing_the_timeout_ends_one_way(kind: str, tmp_path: Path) -> None:
    """An emit racing the timeout: the payload exactly when the emit says it resumed the run."""
    rng, seed = chaos_rng()
    ids = [f"wait{i}" for i in range(RUNS)]
    async with apps(kind, tmp_path) as (worker, client, _):
        for run_id in ids:
            params = {"topic": f"race.{run_id}", "timeout": WAIT}
            await client.start_workflow("race.wait", params, run_id=run_id)
        waiting = await all_suspended(client, ids)
        told: dict[str, int] = {}

        async def emit(run_id: str, offset: float) -> None:
            resume_at = waiting[run_id].resume_at
            assert resume_at is not None
            await sleep_until(resume_at + timedelta(seconds=offset))
            told[run_id] = await client.emit(f"race.{run_id}", run_id)

        async with anyio.create_task_group() as tg:
            for run_id in ids:
                tg.start_soon(emit, run_id, rng.uniform(-0.03, 0.03))
        outcomes = {"payload": 0, "timeout": 0}
        for run_id in ids:
            result = await worker.wait_for_completion(run_id, timeout=20)
            assert result.is_completed, (seed, result)
            if told[run_id] == 1:
                assert result.value == {"got": run_id}, (seed, run_id, result.value)
                outcomes["payload"] += 1
            else:
                assert told[run_id] == 0, (seed, run_id)
                assert result.value == "timeout", (seed, run_id)
                outcomes["timeout"] += 1
    print(f"emit vs timeout [{kind}]: seed={seed} {outcomes}")


@pytest.mark.parametrize("kind", KINDS)
async def test_cancel_racing_completion_ends_one_way(kind: str, tmp_path: Path) -> None:
    """A cancel racing completion: CANCELLED exactly when the cancel says so, else COMPLETED."""
    rng, seed = chaos_rng()
    plans: dict[str, dict[str, float]] = {
        f"work{i}": {
            "a": rng.uniform(0.0, 0.2),
            "sleep": rng.uniform(0.0, 0.2),
            "b": rng.uniform(0.0, 0.2),
        }
        for i in range(RUNS)
    }
    told: dict[str, bool] = {}
    async with apps(kind, tmp_path) as (worker, client, canceller):

        async def race(run_id: str, params: dict[str, float]) -> None:
            await client.start_workflow("race.work", params, run_id=run_id)
            # From its first claim on, the run takes about sum(params) seconds.
            await wait_until(claimed, canceller, run_id, timeout=30, what=f"{run_id} claimed")
            await anyio.sleep(rng.uniform(0.0, sum(params.values()) * 1.2))
            told[run_id] = await canceller.cancel_run(run_id, reason="race")

        async with anyio.create_task_group() as tg:
            for run_id, params in plans.items():
                tg.start_soon(race, run_id, params)
        outcomes = {"cancelled": 0, "completed": 0}
        for run_id in plans:
            result = await worker.wait_for_completion(run_id, timeout=20)
            state = result.state
            if told[run_id]:
                assert result.is_cancelled, (seed, run_id, state)
                assert state.cancel_reason == "race", (seed, state)
                assert state.result is None, (seed, state)
                outcomes["cancelled"] += 1
            else:
                assert result.is_completed, (seed, state)
                assert result.value == "finished", (seed, state)
                assert state.cancel_reason is None, (seed, state)
                assert set(state.checkpoints) == {"a", "b"}, (seed, state)
                outcomes["completed"] += 1
    print(f"cancel vs completion [{kind}]: seed={seed} {outcomes}")


@pytest.mark.parametrize("kind", KINDS)
async def test_two_emitters_racing_deliver_each_run_one_payload(kind: str, tmp_path: Path) -> None:
    """Two emitters racing on one topic: each run gets one payload, and the counts add up.

    A run takes the older of two racing events (the topic's order), so the emit whose
    delivery resumed it may be the other one: the counts add up in total, and per emitter
    whenever each delivery gave its own event."""
    rng, seed = chaos_rng()
    shared = [f"both{i}" for i in range(RUNS)]
    # Half the runs wait on one shared topic; each of the others on its own topic, which
    # both emitters emit to in their own random orders (one race per run).
    own = [f"each{i}" for i in range(RUNS)]
    topic = f"race.shared.{seed}"
    async with apps(kind, tmp_path) as (worker, one, two):
        for run_id in shared:
            await one.start_workflow("race.wait", {"topic": topic, "timeout": 600}, run_id=run_id)
        for run_id in own:
            params = {"topic": f"race.{run_id}", "timeout": 600}
            await one.start_workflow("race.wait", params, run_id=run_id)
        await all_suspended(one, shared + own)
        told: dict[str, int] = {"one": 0, "two": 0}
        go = anyio.Event()

        async def emit(app: stemd.App, name: str) -> None:
            order = [f"race.{run_id}" for run_id in own] + [topic]
            rng.shuffle(order)
            await go.wait()
            for each in order:
                told[name] += await app.emit(each, name)
                await anyio.lowlevel.checkpoint()  # let the other emitter interleave

        async with anyio.create_task_group() as tg:
            tg.start_soon(emit, one, "one")
            tg.start_soon(emit, two, "two")
            await anyio.sleep(0.01)
            go.set()
        got: dict[str, int] = {"one": 0, "two": 0}
        for run_id in shared + own:
            result = await worker.wait_for_completion(run_id, timeout=30)
            assert result.is_completed, (seed, result)
            got[result.value["got"]] += 1
        assert sum(got.values()) == sum(told.values()) == 2 * RUNS, (seed, got, told)
        assert await one.emit(topic, "late") == 0
    print(f"two emitters [{kind}]: seed={seed} {told}")
