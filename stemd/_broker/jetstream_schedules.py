"""Durable wake-ups held by the NATS server: JetStream scheduled messages (server 2.12+).

Every timer the engine sets (a sleep's wake time, an event timeout, a retry backoff, a
policy deadline, a retention expiry) is also published as a scheduled message on
``<prefix>.sched.<run_id>`` with ``Nats-Schedule: @at <time>`` and the target
``<prefix>.timer.<run_id>``; a subject holds one schedule, so a run's newer timer replaces
its older one. At that time the server puts a message on the target subject of the
work-queue stream ``STEM_TIMERS``, and this actor, on whichever daemon takes it, fires
the run's timer through the engine (a compare-and-set in the store, so a timer fired
twice does nothing). The message carries its exact due time: one that comes before it
by this daemon's clock (a server's clock ahead of the daemon's, in a cluster) is put back
until then, not taken as fired; otherwise the wake would be left to the in-process
timer's polling of the store.

The in-process timer actor (:mod:`stemd._actors.timer`) keeps running beside it: it fires the
timers of this daemon to the millisecond (the server's scheduler fires up to ~250 ms
late) and, by polling the store, it is the fallback for a schedule that was never
published (a crash between commit and publish, a server without schedules).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import msgspec
import structlog

from stemd._broker.capabilities import WorkQueueStreams
from stemd._broker.pull import JsMsg, PullConsumer
from stemd._clock import utcnow
from stemd._errors import StemError, TransportError
from stemd._natsconn import SCHEDULE, SCHEDULE_TARGET, JetStreamApiError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = ["FireTimer", "ScheduleSource", "ScheduleStats", "ScheduledTimers", "WatchTimers"]

#: Fires a run's timer if it is due (a compare-and-set: twice is harmless);
#: ``Engine.fire_timer`` is one.
FireTimer = Callable[[str], Awaitable[object]]

#: Installs a hook told of every timer the engine sets, as (time, run id); returns what
#: removes it.
WatchTimers = Callable[[Callable[[datetime, str], None]], Callable[[], None]]


class ScheduleSource(WorkQueueStreams, Protocol):
    """What the actor needs of the broker (a
    :class:`~stemd._broker.jetstream.JetStreamBroker` has it)."""

    @property
    def storage(self) -> str: ...

    @property
    def replicas(self) -> int: ...


log = structlog.get_logger("stemd.schedules")

_NS = 1_000_000_000

#: Added to the wait of a message that came early, so it comes back just after its time.
_LATE = 0.002


class ScheduleStats(msgspec.Struct, frozen=True, kw_only=True):
    """Schedules published and fired so far."""

    published: int
    fired: int
    dropped: int
    early: int = 0
    """Fired messages that came before their due time by the engine's clock, put back."""


def _stamp(at: datetime) -> str:
    """``at`` for the schedule header, in milliseconds, rounded up (never before ``at``)."""
    at = at.astimezone(UTC)
    if at.microsecond % 1000:
        at += timedelta(microseconds=1000 - at.microsecond % 1000)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _due(at: datetime) -> bytes:
    """``at`` to the microsecond, the body of the schedule (and of the message it fires)."""
    return at.astimezone(UTC).isoformat(timespec="microseconds").encode()


def _due_of(data: bytes) -> datetime | None:
    """The due time a fired message carries; ``None`` for one without, unreadable, or
    without a zone (it could not be compared with the clock)."""
    try:
        due = datetime.fromisoformat(data.decode()) if data else None
    except (UnicodeDecodeError, ValueError):
        return None
    return due if due is not None and due.tzinfo is not None else None


class ScheduledTimers:
    """Publishes the engine's timers as JetStream schedules and fires them when they come.

    Args:
        broker: the JetStream broker (its connection, prefix, replicas and storage).
        fire_timer: fires a run's timer (the engine's).
        watch_timers: installs the hook told of the engine's timers while the actor runs.
        now: the engine's clock (what "due" means); the system's by default.
        concurrency: fired timers handled at once.
    """

    name = "schedules"

    def __init__(
        self,
        broker: ScheduleSource,
        fire_timer: FireTimer,
        watch_timers: WatchTimers,
        *,
        now: Callable[[], datetime] | None = None,
        concurrency: int = 8,
    ) -> None:
        self.broker = broker
        self.fire_timer = fire_timer
        self.watch_timers = watch_timers
        self.now = now or utcnow
        self.concurrency = concurrency
        self.stream = f"{broker.stream}_TIMERS"
        self._published = 0
        self._fired = 0
        self._dropped = 0
        self._early = 0
        # The last time scheduled per run: the engine reports a run's timer on every
        # change, most of them leave it where it was.
        self._sent: OrderedDict[str, datetime] = OrderedDict()

    def statistics(self) -> ScheduleStats:
        return ScheduleStats(
            published=self._published,
            fired=self._fired,
            dropped=self._dropped,
            early=self._early,
        )

    def stream_config(self) -> dict[str, Any]:
        prefix = self.broker.prefix
        return {
            "name": self.stream,
            "subjects": [f"{prefix}.sched.>", f"{prefix}.timer.>"],
            "retention": "workqueue",
            "allow_msg_schedules": True,
            "storage": self.broker.storage,
            "num_replicas": self.broker.replicas,
        }

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        conn = self.broker.conn
        try:
            await conn.ensure_stream(self.stream_config())
        except JetStreamApiError as exc:
            # A server before 2.12 has no schedules: the in-process timer does it all.
            log.warning("no server-side schedules; using the timer alone", error=str(exc))
            task_status.started()
            await anyio.sleep_forever()
        prefix = self.broker.prefix
        consumer = PullConsumer(
            conn,
            self.stream,
            {
                "durable_name": "timers",
                "filter_subject": f"{prefix}.timer.>",
                "ack_policy": "explicit",
                "ack_wait": 30 * _NS,
                "max_deliver": 10,
                "deliver_policy": "all",
            },
        )
        await consumer.ensure()
        send, receive = anyio.create_memory_object_stream[tuple[datetime, str]](10_000)

        def hook(at: datetime, run_id: str) -> None:
            if self._sent.get(run_id) == at:
                return
            try:
                send.send_nowait((at, run_id))
            except anyio.WouldBlock:
                self._dropped += 1  # the timer's store polling still finds it

        unwatch = self.watch_timers(hook)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._publish_all, receive)
                for _ in range(self.concurrency):
                    tg.start_soon(self._fire_all, consumer)
                task_status.started()
        finally:
            unwatch()
            send.close()
            with anyio.CancelScope(shield=True):
                await consumer.close()

    async def _publish_all(
        self, receive: anyio.abc.ObjectReceiveStream[tuple[datetime, str]]
    ) -> None:
        prefix = self.broker.prefix
        conn = self.broker.conn
        async with receive:
            async for at, run_id in receive:
                if self._sent.get(run_id) == at:
                    continue
                headers = {
                    SCHEDULE: f"@at {_stamp(at)}",
                    SCHEDULE_TARGET: f"{prefix}.timer.{run_id}",
                }
                try:
                    await conn.js_publish(f"{prefix}.sched.{run_id}", _due(at), headers=headers)
                except StemError as exc:
                    self._dropped += 1
                    # NATS away: reported once as degraded; the in-process timer fires it.
                    level = log.debug if isinstance(exc, TransportError) else log.warning
                    level("timer not scheduled on the server", run_id=run_id, error=str(exc))
                    continue
                self._published += 1
                self._sent[run_id] = at
                self._sent.move_to_end(run_id)
                while len(self._sent) > 100_000:
                    self._sent.popitem(last=False)

    async def _fire_all(self, consumer: PullConsumer) -> None:
        while True:
            msg = await consumer.next()
            await self._fire(msg)

    async def _fire(self, msg: JsMsg) -> None:
        run_id = msg.subject.rpartition(".")[2]
        due = _due_of(msg.data)
        if due is not None:
            early = (due - self.now()).total_seconds()
            if early > 0:
                self._early += 1
                await msg.nak(early + _LATE)
                return
        try:
            await self.fire_timer(run_id)
        except StemError as exc:
            log.warning("scheduled timer not fired; will retry", run_id=run_id, error=str(exc))
            await msg.nak(1.0)
            return
        self._fired += 1
        self._sent.pop(run_id, None)
        await msg.ack()
