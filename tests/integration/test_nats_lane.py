"""The JetStream broker's local lane, against a real nats-server: runs a daemon makes
runnable for its own workers skip the work-queue stream; what its workers cannot take soon
goes to the stream, and what is left in the lane when it stops goes there too."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest

import stemd
from stemd._broker.jetstream import JetStreamBroker
from tests.helpers import wait_until

if TYPE_CHECKING:
    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio


async def tasks_published(conn: NatsConnection) -> int:
    """How many tasks the work-queue stream ever took (its last sequence)."""
    info = await conn.js_api("STREAM.INFO.STEM_TASKS")
    return int(info["state"]["last_seq"])


def _gated(name: str, gate: anyio.Event, entered: list[str]) -> stemd.Flow:
    flow = stemd.Flow(name)

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> str:
        entered.append(ctx.run_id)
        await gate.wait()
        return ctx.run_id

    return flow


@pytest.mark.parametrize("local", [True, False], ids=["lane", "stream"])
async def test_runs_made_runnable_here_skip_the_stream(
    nats: NatsServer, conn: NatsConnection, local: bool
) -> None:
    """Started by the daemon whose workers serve their queue, runs reach them without a
    task in the stream (``local=0``: through the stream, one task each)."""
    gate = anyio.Event()
    gate.set()
    flow = _gated("lane.quick", gate, [])
    broker = f"{nats.url}?local={int(local)}"
    async with stemd.App(store=nats.url, broker=broker, workflows=[flow]) as app:
        before = await tasks_published(conn)
        for _ in range(5):
            run_id = await app.start_workflow(flow)
            assert (await app.wait_for_completion(run_id, timeout=10)).is_completed
        published = await tasks_published(conn) - before
    assert published == (0 if local else 5)


async def test_a_lane_that_is_not_taken_soon_overflows_to_the_stream(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """With its one worker busy, the daemon keeps a few runs in its lane and sends the
    others to the stream; every run completes once the worker is free."""
    gate = anyio.Event()
    entered: list[str] = []
    flow = _gated("lane.busy", gate, entered)
    async with stemd.App(store=nats.url, broker=nats.url, workflows=[flow], concurrency=1) as app:
        before = await tasks_published(conn)
        ids = [await app.start_workflow(flow) for _ in range(10)]
        await wait_until(lambda: _true(bool(entered)), what="the first run in its step")
        # The lane holds 4 (four times the workers); the other 5 went to the stream.
        assert await tasks_published(conn) - before == 5
        gate.set()
        with anyio.fail_after(30):
            for run_id in ids:
                assert (await app.wait_for_completion(run_id, timeout=30)).is_completed
    assert sorted(entered) == sorted(ids)


async def test_runs_left_in_the_lane_go_to_the_stream_when_the_daemon_stops(
    nats: NatsServer,
) -> None:
    """A daemon stopping with runs in its lane publishes them: another daemon, whose
    sweeper would not look for an hour, completes them at once."""
    gate = anyio.Event()
    entered: list[str] = []
    flow = _gated("lane.handover", gate, entered)
    done = anyio.Event()
    done.set()
    other = _gated("lane.handover", done, [])
    slow_sweeper = stemd.AppOptions(timing=stemd.Timing(sweep_interval=3600))
    async with stemd.App(
        store=nats.url, broker=nats.url, workflows=[other], options=slow_sweeper
    ) as survivor:
        async with stemd.App(
            store=nats.url, broker=nats.url, workflows=[flow], concurrency=1
        ) as leaving:
            ids = [await leaving.start_workflow(flow) for _ in range(3)]
            await wait_until(lambda: _true(bool(entered)), what="the first run in its step")
            broker = leaving.engine.broker
            assert isinstance(broker, JetStreamBroker)
            assert sum(broker.queued(run_id) for run_id in ids) == 2
        with anyio.fail_after(30):
            for run_id in ids:
                result = await survivor.wait_for_completion(run_id, timeout=30)
                assert result.is_completed, result


async def _true(value: bool) -> bool:
    return value


async def test_a_run_handed_back_goes_back_to_the_lane(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """A worker that hands a lane's run id back (nak: draining, an outage, a slice that
    failed) puts it back in the lane, after the delay it asks (not at once: a failing
    slice is not retried in a tight loop), then first; no trip through the stream, no wait
    for NATS while it is away. One handed back with a delay still waiting at close goes to
    the stream."""
    broker = JetStreamBroker(nats.url)
    await broker.open()
    try:
        broker.serve_locally("q", 4)
        for run_id in ("r1", "r2", "r3"):
            await broker.enqueue(run_id, "q", key=f"{run_id}:1")
        first = await broker.receive("q")
        assert first.run_id == "r1"
        assert not broker.queued("r1")
        await first.nak(None)
        assert broker.queued("r1")
        with anyio.fail_after(5):
            assert (await broker.receive("q")).run_id == "r1"  # first again
            again = await broker.receive("q")
            assert again.run_id == "r2"
            handed = time.monotonic()
            await again.nak(0.5)
            assert broker.queued("r2")
            assert (await broker.receive("q")).run_id == "r3"
            last = await broker.receive("q")
            assert last.run_id == "r2"
            assert time.monotonic() - handed >= 0.45
        assert await tasks_published(conn) == 0
        await last.nak(60)
    finally:
        await broker.close()
    assert await tasks_published(conn) == 1  # the one still waiting to come back
