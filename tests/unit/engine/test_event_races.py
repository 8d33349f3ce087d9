"""Races of emits, sends, sweeps and re-waiting runs through an App, on every store: many
emitters at once, the sweeper every 10 ms enqueueing what it finds runnable, runs that
wait again as soon as they are resumed. Every run takes every event once, all runs in the
same order (the topic's), and every message sent to it once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

import stemd

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio

RUNS = 16
EMITTERS = 4
PER_EMITTER = 4
EVENTS = EMITTERS * PER_EMITTER


@stemd.script("races.collect")
async def collect(ctx: stemd.ScriptContext, waits: int) -> list[str]:
    """Waits ``waits`` times on one topic; returns what it took."""
    taken = []
    for _ in range(waits):
        taken.append(await ctx.wait_for_event("races.t"))
    return taken


@stemd.script("races.mixed")
async def mixed(ctx: stemd.ScriptContext, waits: int) -> list[str]:
    """Waits on a topic for events and messages mixed; returns what it took."""
    taken = []
    for _ in range(waits):
        _, payload = await ctx.wait_for_any(["races.m", "races.e"])
        taken.append(payload)
    return taken


async def test_concurrent_emitters_and_sweeps_give_each_event_once_in_order(
    store: Store,
) -> None:
    """16 runs waiting 16 times; 4 emitters emit 4 events each at once while the sweeper
    runs every 10 ms: every run ends with all 16 events, once each, in one order."""
    async with stemd.App(
        store=store,
        workflows=[collect],
        options=stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.01)),
    ) as app:
        ids = [await app.start_workflow(collect, EVENTS, run_id=f"c{i}") for i in range(RUNS)]

        async def emitter(n: int) -> None:
            for k in range(PER_EMITTER):
                await app.emit("races.t", f"{n}-{k}")
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for n in range(EMITTERS):
                tg.start_soon(emitter, n)
        results = []
        with anyio.fail_after(60):
            for run_id in ids:
                done = await app.wait_for_completion(run_id, timeout=60)
                assert done.is_completed, done
                results.append(done.value)
    first = results[0]
    assert sorted(first) == sorted(f"{n}-{k}" for n in range(EMITTERS) for k in range(PER_EMITTER))
    for n in range(EMITTERS):  # one emitter's events in the order it emitted them
        mine = [e for e in first if e.startswith(f"{n}-")]
        assert mine == [f"{n}-{k}" for k in range(PER_EMITTER)]
    assert all(r == first for r in results)


async def test_racing_sends_and_emits_give_each_once(store: Store) -> None:
    """Runs waiting on a message topic and an event topic at once, sent messages and
    emitted events concurrently: each takes every message sent to it and every event,
    once each."""
    async with stemd.App(
        store=store,
        workflows=[mixed],
        options=stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.01)),
    ) as app:
        per_run = 3
        ids = [
            await app.start_workflow(mixed, per_run + PER_EMITTER, run_id=f"m{i}")
            for i in range(RUNS // 2)
        ]

        async def sender(run_id: str) -> None:
            for k in range(per_run):
                assert await app.send(run_id, "races.m", f"{run_id}:{k}", key=f"k{k}") is True
                assert await app.send(run_id, "races.m", "dup", key=f"k{k}") is False

        async def emitter() -> None:
            for k in range(PER_EMITTER):
                await app.emit("races.e", f"e{k}")

        async with anyio.create_task_group() as tg:
            tg.start_soon(emitter)
            for run_id in ids:
                tg.start_soon(sender, run_id)
        with anyio.fail_after(60):
            for run_id in ids:
                done = await app.wait_for_completion(run_id, timeout=60)
                assert done.is_completed, done
                assert done.value is not None
                messages = [v for v in done.value if v.startswith(run_id)]
                assert messages == [f"{run_id}:{k}" for k in range(per_run)]
                assert [v for v in done.value if v.startswith("e")] == [
                    f"e{k}" for k in range(PER_EMITTER)
                ]
                assert "dup" not in done.value
