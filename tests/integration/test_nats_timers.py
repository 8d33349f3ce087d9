"""Timers held by the NATS server as JetStream scheduled messages."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

import stemd
from stemd._broker.jetstream import JetStreamBroker
from stemd._broker.jetstream_schedules import ScheduledTimers
from stemd._clock import SystemClock
from stemd._codec import codec_for
from stemd._engine.engine import Engine
from stemd._engine.observer import RunChanged
from stemd._model import RunStatus
from stemd._store.base import RunRecord, Suspend
from stemd._store.jetstream import JetStreamStore
from tests.helpers import wait_until

if TYPE_CHECKING:
    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio


async def has_status(store: JetStreamStore, run_id: str, status: RunStatus) -> bool:
    """Whether ``run_id`` is in ``status``."""
    rec = await store.get_run(run_id)
    return rec is not None and rec.status is status


async def fired(schedules: ScheduledTimers) -> bool:
    """Whether the scheduled timers have fired at least once."""
    return schedules.statistics().fired >= 1


async def test_a_scheduled_message_wakes_a_sleeping_run(nats: NatsServer) -> None:
    """With no in-process timer at all, the server's schedule fires the run's wake-up."""
    store = JetStreamStore.from_url(nats.url)
    broker = JetStreamBroker.from_url(nats.url)
    await store.open()
    await broker.open()
    clock = SystemClock()
    engine = Engine(
        store=store,
        broker=broker,
        codec=codec_for("json"),
        clock=clock,
        workflows={},
        owner="test",
    )
    try:
        # The broker's own wiring (as an App with workers has it), without the DLQ actor.
        (schedules,) = [a for a in broker.actors(engine) if isinstance(a, ScheduledTimers)]
        async with anyio.create_task_group() as tg:
            await tg.start(schedules.run)
            now = clock.now()
            await store.create_run(
                RunRecord(
                    run_id="r1",
                    workflow="wf",
                    status=RunStatus.PENDING,
                    params=b"null",
                    created_at=now,
                    updated_at=now,
                )
            )
            claim = await store.claim("r1", "test", now, 30.0)
            assert claim is not None
            wake = now + timedelta(seconds=0.5)
            result = await store.commit("r1", claim.token, Suspend(resume_at=wake), now)
            assert result.record.timer_at == wake
            # What the engine does after every change: tell its observers.
            assert engine.observers.run_changed  # the schedules subscribed
            change = RunChanged(
                run_id="r1", workflow="wf", status=RunStatus.SUSPENDED, timer_at=wake
            )
            for hook in engine.observers.run_changed:
                hook(change)
            await wait_until(fired, schedules, what="the schedule to fire")
            assert await has_status(store, "r1", RunStatus.PENDING)
            assert clock.now() >= wake
            assert schedules.statistics().published == 1
            tg.cancel_scope.cancel()
    finally:
        await broker.close()
        await store.close()


sleepy = stemd.Flow("sleepy.flow")


@sleepy.step("nap")
async def nap(ctx: stemd.FlowContext) -> str:
    """Sleeps durably for 0.3 s."""
    await ctx.sleep(0.3)
    return "awake"


async def timers_done(conn: NatsConnection) -> bool:
    """Whether the timer stream is empty and its consumer has taken two messages."""
    info = await conn.js_api("STREAM.INFO.STEM_TASKS_TIMERS")
    consumer = await conn.js_api("CONSUMER.INFO.STEM_TASKS_TIMERS.timers")
    return int(info["state"]["messages"]) == 0 and consumer["delivered"]["stream_seq"] >= 2


async def test_a_daemon_schedules_its_sleeps_on_the_server(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """A daemon publishes each sleep as a schedule; once fired and taken, none is left."""
    async with stemd.App(store=nats.url, broker=nats.url, workflows=[sleepy]) as app:
        run_id = await app.start_workflow(sleepy)
        result = await app.wait_for_completion(run_id, timeout=10)
        assert result.value == "awake"
        # The in-process timer woke the run first; the schedule still fires and is
        # consumed (finding nothing to do).
        await wait_until(timers_done, conn, what="the schedule to fire and be taken")
