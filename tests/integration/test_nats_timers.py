"""Timers held by the NATS server as JetStream scheduled messages."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

import stemd
from stemd._broker.jetstream import JetStreamBroker
from stemd._broker.jetstream_schedules import ScheduledTimers, ScheduleStats
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


class BehindClock(SystemClock):
    """The system's clock read ``behind`` seconds late: a daemon whose clock is behind the
    NATS server's (another machine of a cluster)."""

    def __init__(self, behind: float) -> None:
        self.behind = timedelta(seconds=behind)

    def now(self) -> datetime:
        return super().now() - self.behind


async def sleep_and_wait_for_the_schedule(
    nats: NatsServer, clock: SystemClock, sleep: float = 0.5
) -> ScheduleStats:
    """Suspend a run ``sleep`` seconds by ``clock`` with no in-process timer at all, tell
    the server's schedules of it, and see the run woken by them; their statistics."""
    store = JetStreamStore.from_url(nats.url)
    broker = JetStreamBroker.from_url(nats.url)
    await store.open()
    await broker.open()
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
            # A due time between two milliseconds: the schedule's header has milliseconds.
            wake = now + timedelta(seconds=sleep)
            wake = wake.replace(microsecond=wake.microsecond // 1000 * 1000 + 999)
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
            stats = schedules.statistics()
            assert stats.published == 1
            tg.cancel_scope.cancel()
            return stats
    finally:
        await broker.close()
        await store.close()


async def test_a_scheduled_message_wakes_a_sleeping_run(nats: NatsServer) -> None:
    """With no in-process timer at all, the server's schedule fires the run's wake-up."""
    await sleep_and_wait_for_the_schedule(nats, SystemClock())


async def test_a_schedule_firing_before_the_daemons_clock_says_due_comes_back(
    nats: NatsServer,
) -> None:
    """The server fires by its own clock; a daemon whose clock is 1 s behind gets the
    message ~0.8 s before the run is due by its clock (the server fires up to ~250 ms
    late). The message is put back until then, not taken and lost (the run would stay
    asleep until the in-process timer's polling)."""
    stats = await sleep_and_wait_for_the_schedule(nats, BehindClock(1.0), sleep=1.2)
    assert stats.early >= 1
    assert stats.fired == 1


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
