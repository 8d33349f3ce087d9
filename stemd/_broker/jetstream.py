"""The JetStream broker: run ids travel through a work-queue stream shared by every daemon.

- Stream ``STEM_TASKS`` (work-queue retention) holds one message per pending task, on
  the subject ``<prefix>.task.<queue>.<run_id>``; a message is deleted when acknowledged.
- One durable pull consumer per queue (named after the queue, filtered on
  ``<prefix>.task.<queue>.*``), shared by all daemons: the filters never overlap, as a
  work-queue stream requires.
- Acknowledgements are explicit and sent only once the run's outcome is committed (the
  worker pool acks after :meth:`Engine.advance` returns). While a slice runs the pool
  sends ``in_progress()`` every ``ack_wait / 3``; a daemon that dies stops doing so and
  the task is redelivered to another after ``ack_wait``.
- Enqueueing is idempotent: with a ``key`` (the engine passes ``<run_id>:<token>``, a new
  token for every transition that makes a run runnable) the message carries
  ``Nats-Msg-Id: key`` and the stream drops duplicates within ``duplicate_window``;
  without one (the sweeper) nothing is published while a task for that run is queued.
- A task delivered ``max_deliver`` times is dead-lettered: the server's MAX_DELIVERIES
  advisory is captured into a small work-queue stream (so none is lost while no daemon
  listens) and the :class:`~stemd._broker.jetstream_deadletter.DeadLetters` actor copies the task to
  ``STEM_TASKS_DLQ`` (subject ``<prefix>.dlq.<queue>.<run_id>``) and deletes it from the
  work queue.

URL options (query string or keyword arguments): ``stream``, ``prefix``, ``replicas``,
``storage`` (file|memory), ``ack_wait``, ``max_deliver``, ``max_ack_pending``,
``duplicate_window``, ``expires``, ``timeout``, ``publish_retry``, ``dlq`` (0/1),
``dlq_cancel`` (0/1: also cancel the dead-lettered run), ``schedules`` (0/1: timers as
JetStream scheduled messages too, in the stream ``STEM_TASKS_TIMERS``), ``local`` (0/1:
run ids that this process enqueues for its own workers' queue skip the stream, see
:mod:`stemd._broker.lane`).
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from stemd._broker.capabilities import EngineOps
from stemd._broker.jetstream_deadletter import DeadLetters
from stemd._broker.jetstream_schedules import ScheduledTimers, WatchTimers
from stemd._broker.lane import Lane, LaneDelivery
from stemd._broker.pull import JsMsg, PullConsumer
from stemd._engine.observer import OnTimer
from stemd._errors import ConfigError, StemError, TransportError
from stemd._model import validate_run_id
from stemd._natsauth import NatsAuth, redact_url
from stemd._natsconn import (
    MSG_ID,
    JetStreamApiError,
    NatsConnection,
    open_connection,
    split_url,
)
from stemd._options import as_bool, convert_options, keep

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from stemd._store.base import Claim

__all__ = ["EngineOps", "JetStreamBroker", "JetStreamDelivery", "stream_name"]

log = structlog.get_logger("stemd.broker.jetstream")

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NS = 1_000_000_000
MAX_DELIVERIES = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


def _timer_watch(engine: EngineOps) -> WatchTimers:
    """How to be told of ``engine``'s timers: an observer subscribed to it."""

    def watch(hook: Callable[[datetime, str], None]) -> Callable[[], None]:
        return engine.observers.subscribe(OnTimer(hook))

    return watch


def stream_name(prefix: str, role: str) -> str:
    """The default name of a stream of the deployment with subject prefix ``prefix``:
    ``stem`` and ``TASKS`` give ``STEM_TASKS``."""
    return re.sub(r"[^A-Za-z0-9]", "_", prefix).upper() + "_" + role


class JetStreamDelivery:
    """A run id taken from the work queue."""

    __slots__ = ("claim", "heartbeat", "msg", "queue", "run_id")

    def __init__(self, msg: JsMsg, queue: str, heartbeat: float) -> None:
        self.claim: Claim | None = None  # the worker claims the run itself
        self.msg = msg
        self.queue = queue
        self.run_id = msg.subject.rpartition(".")[2]
        # Seconds between two in_progress() calls while the run is being advanced.
        self.heartbeat = heartbeat

    @property
    def num_delivered(self) -> int:
        """How many times this task has been delivered."""
        return self.msg.num_delivered

    async def ack(self) -> None:
        await self.msg.ack()

    async def nak(self, delay: float | None = None) -> None:
        await self.msg.nak(delay)

    async def in_progress(self) -> None:
        await self.msg.in_progress()

    async def term(self) -> None:
        """Drop the task for good."""
        await self.msg.term()


class JetStreamBroker:
    """A :class:`~stemd._broker.base.Broker` on a JetStream work-queue stream.

    Args:
        url: the NATS server URL.
        stream: the work-queue stream's name (default ``<PREFIX>_TASKS``: ``STEM_TASKS``).
        prefix: subject prefix (``<prefix>.task.<queue>.<run_id>``); deployments sharing
            one NATS keep apart with their own prefix.
        replicas: stream replicas (R3 in a cluster).
        storage: ``"file"`` or ``"memory"``.
        ack_wait: seconds before an unacknowledged, silent delivery is redelivered.
        max_deliver: deliveries before a task is dead-lettered (-1: never).
        max_ack_pending: tasks in flight at once per queue, over all daemons.
        duplicate_window: seconds during which an enqueue with the same key is dropped.
        expires: lifetime of one pull request, seconds. Short: a daemon that stops
            answering (SIGSTOP, a hung loop) while its connection stays up keeps the
            messages its open requests catch; they must expire before its session is
            found silent (``lease`` minus a renewal), or a run taken over from it would
            go back to it and wait for ``ack_wait``.
        timeout: seconds to wait for one NATS request.
        publish_retry: seconds an enqueue keeps retrying while NATS is unavailable.
        dlq: capture dead letters into ``<stream>_DLQ``.
        dlq_cancel: also cancel a dead-lettered run (with reason ``dead-lettered``), so
            that the sweeper does not hand the poison task out again.
        schedules: also hold every timer as a JetStream scheduled message (server 2.12+),
            see :mod:`stemd._broker.jetstream_schedules`.
        local: hand the run ids this process enqueues for a queue its workers serve to
            them directly (:meth:`serve_locally`, :mod:`stemd._broker.lane`).
        auth: credentials and TLS for the connection (``[nats_auth]``).
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str | None = None,
        prefix: str = "stem",
        replicas: int = 1,
        storage: str = "file",
        ack_wait: float = 30.0,
        max_deliver: int = 20,
        max_ack_pending: int = 10_000,
        duplicate_window: float = 600.0,
        expires: float = 1.0,
        timeout: float = 2.0,
        publish_retry: float = 10.0,
        dlq: bool = True,
        dlq_cancel: bool = True,
        schedules: bool = True,
        local: bool = True,
        name: str = "stemd-broker",
        auth: NatsAuth | None = None,
    ) -> None:
        if not all(_TOKEN.fullmatch(t) for t in prefix.split(".")):
            raise ConfigError(f"broker: invalid subject prefix {prefix!r}")
        if stream is None:
            stream = stream_name(prefix, "TASKS")
        if not _TOKEN.fullmatch(stream):
            raise ConfigError(f"broker: invalid stream name {stream!r}")
        if storage not in ("file", "memory"):
            raise ConfigError(f"broker: storage must be 'file' or 'memory', not {storage!r}")
        if ack_wait < 1:
            raise ConfigError("broker: ack_wait must be at least 1 second")
        if max_deliver == 0 or max_deliver < -1:
            raise ConfigError("broker: max_deliver must be positive or -1")
        self.url = url
        self.stream = stream
        self.prefix = prefix
        self.replicas = replicas
        self.storage = storage
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.max_ack_pending = max_ack_pending
        self.duplicate_window = duplicate_window
        self.expires = expires
        self.timeout = timeout
        self.publish_retry = publish_retry
        self.dlq = dlq
        self.dlq_cancel = dlq_cancel
        self.schedules = schedules
        self.local = local
        self.name = name
        self.auth = auth
        self.dlq_stream = f"{stream}_DLQ"
        self.advisory_stream = f"{stream}_DEAD"
        self._conn: NatsConnection | None = None
        self._consumers: dict[str, PullConsumer] = {}
        self._lanes: dict[str, Lane] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> JetStreamBroker:
        """A broker for ``nats://HOST:PORT?ack_wait=30&max_deliver=20&...`` (keyword
        options override the query)."""
        server, query = split_url(url)
        kinds: dict[str, Callable[[Any], Any]] = {
            **dict.fromkeys(("replicas", "max_deliver", "max_ack_pending"), int),
            **dict.fromkeys(
                ("ack_wait", "duplicate_window", "expires", "timeout", "publish_retry"), float
            ),
            **dict.fromkeys(("dlq", "dlq_cancel", "schedules", "local"), as_bool),
            **dict.fromkeys(("stream", "prefix", "storage", "name"), str),
            "auth": keep,
        }
        where = f" in {redact_url(url)!r}"
        kwargs = convert_options({**query, **options}, kinds, what="broker", where=where)
        return cls(server, **kwargs)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def conn(self) -> NatsConnection:
        if self._conn is None:
            raise TransportError("the JetStream broker is not open")
        return self._conn

    def stream_configs(self) -> list[dict[str, Any]]:
        """Configurations of the streams the broker needs."""
        common = {"storage": self.storage, "num_replicas": self.replicas}
        configs = [
            {
                "name": self.stream,
                "subjects": [f"{self.prefix}.task.>"],
                "retention": "workqueue",
                "discard": "old",
                "allow_direct": True,
                "duplicate_window": int(self.duplicate_window * _NS),
                **common,
            }
        ]
        if self.dlq:
            configs.append(
                {
                    "name": self.dlq_stream,
                    "subjects": [f"{self.prefix}.dlq.>"],
                    "retention": "limits",
                    "allow_direct": True,
                    "duplicate_window": 3600 * _NS,
                    **common,
                }
            )
            configs.append(
                {
                    "name": self.advisory_stream,
                    "subjects": [f"{MAX_DELIVERIES}.{self.stream}.*"],
                    "retention": "workqueue",
                    "max_age": 7 * 24 * 3600 * _NS,
                    **common,
                }
            )
        return configs

    async def open(self) -> None:
        """Connect and create (or update) the streams."""
        if self._conn is not None:
            return
        conn = await open_connection(self.url, name=self.name, timeout=self.timeout, auth=self.auth)
        try:
            for config in self.stream_configs():
                await conn.ensure_stream(config)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        # What this process's workers did not take goes to the stream, for any daemon
        # (lost only with NATS away: the runs are runnable in the store, for the sweepers).
        lanes, self._lanes = self._lanes, {}
        for queue, lane in lanes.items():
            for run_id in lane.drain():
                try:
                    await self._publish(run_id, queue)
                except TransportError as exc:
                    log.warning("run left to the sweepers", run_id=run_id, error=str(exc))
        consumers, self._consumers = self._consumers, {}
        for consumer in consumers.values():
            await consumer.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def actors(self, engine: EngineOps | None = None) -> list[Any]:
        """Actors this broker needs beside the workers: the dead-letter handler and the
        server-side timer schedules, working for ``engine``."""
        out: list[Any] = []
        if self.dlq:
            cancel = engine.cancel if engine is not None and self.dlq_cancel else None
            out.append(DeadLetters(self, cancel))
        if self.schedules and engine is not None:
            out.append(
                ScheduledTimers(self, engine.fire_timer, _timer_watch(engine), now=engine.clock.now)
            )
        return out

    # -- the protocol ---------------------------------------------------------------------

    def subject(self, queue: str, run_id: str) -> str:
        """The subject of ``run_id``'s task in ``queue``."""
        return f"{self.prefix}.task.{queue}.{run_id}"

    def consumer_config(self, queue: str) -> dict[str, Any]:
        """The durable pull consumer of ``queue``."""
        return {
            "durable_name": queue,
            "filter_subject": f"{self.prefix}.task.{queue}.*",
            "ack_policy": "explicit",
            "ack_wait": int(self.ack_wait * _NS),
            "max_deliver": self.max_deliver,
            "max_ack_pending": self.max_ack_pending,
            "deliver_policy": "all",
            "replay_policy": "instant",
            "max_waiting": 4096,
        }

    @staticmethod
    def _check_queue(queue: str) -> str:
        if not isinstance(queue, str) or not _TOKEN.fullmatch(queue):
            raise StemError(f"invalid queue name {queue!r}: use 1-64 letters, digits, '-', '_'")
        return queue

    def serve_locally(self, queue: str, capacity: int) -> None:
        """Hand the run ids of ``queue`` that this process enqueues to its own workers,
        up to ``capacity`` waiting at once, without the stream (see
        :mod:`stemd._broker.lane`); nothing when the broker's ``local`` option is off."""
        if self.local and capacity > 0:
            self._lanes[self._check_queue(queue)] = Lane(capacity, self.consumer(queue).poke)

    def room(self, queue: str) -> int:
        """How many more runs of ``queue`` the lane takes now (see :meth:`Lane.room`)."""
        lane = self._lanes.get(queue)
        return 0 if lane is None else lane.room()

    def hand_off(self, claim: Claim) -> None:
        """Give ``claim``'s run to this process's workers through the lane (with no lane,
        the run stays claimed here until its session ends or the claim expires)."""
        lane = self._lanes.get(claim.record.queue)
        if lane is not None:
            lane.hand(claim)

    async def enqueue(self, run_id: str, queue: str, *, key: str | None = None) -> None:
        validate_run_id(run_id)
        lane = self._lanes.get(queue)
        if key is not None and lane is not None and lane.offer(run_id):
            return
        await self._publish(run_id, queue, key)

    async def _give_back(self, delivery: LaneDelivery, delay: float | None) -> None:
        """A lane's run id handed back by a worker: into the lane again after ``delay``
        (with its claim, if one was made), or, the broker closed, to the stream if NATS
        takes it at once (else the sweepers find the run)."""
        run_id, queue = delivery.run_id, delivery.queue
        lane = self._lanes.get(queue)
        if lane is not None:
            lane.put_back(run_id, delay, delivery.claim)
            return
        subject = self.subject(queue, run_id)
        if self._conn is not None:
            with contextlib.suppress(TransportError):
                await self._conn.js_publish(subject, b"")

    async def _publish(self, run_id: str, queue: str, key: str | None = None) -> None:
        """Put ``run_id``'s task into the stream (see :meth:`enqueue`)."""
        subject = self.subject(self._check_queue(queue), run_id)
        conn = self.conn
        delay = 0.05
        give_up = 0.0
        while True:
            try:
                if key is None:
                    # No version to deduplicate on: publish only if no task of this run
                    # is waiting or in flight (work-queue messages go when acked).
                    if await conn.direct_get(self.stream, subject) is not None:
                        return
                    await conn.js_publish(subject, b"")
                else:
                    # Retrying with the same Nats-Msg-Id is safe: the stream drops copies.
                    await conn.js_publish(subject, b"", headers={MSG_ID: key})
                return
            except TransportError as exc:
                give_up = give_up or time.monotonic() + self.publish_retry
                if time.monotonic() >= give_up:
                    raise
                log.warning("enqueue failed; retrying", run_id=run_id, error=str(exc))
                await anyio.sleep(delay)
                delay = min(1.0, delay * 2)

    async def redeliver_in_flight(self, found: Sequence[tuple[str, str]]) -> int:
        """Publish again the task of each ``(run_id, queue)`` of ``found`` (runnable runs
        nobody holds) that its consumer delivered and nobody acknowledged: it may be in
        the hands of a dead process (fetched, not yet claimed), which would keep it from
        every worker for ``ack_wait``. The copy's message id names the old task, so that
        daemons doing this at once publish one; a copy of a task a live worker holds is
        harmless (the claims are fenced: one of the two finds the run taken)."""
        conn = self.conn
        delivered: dict[str, int] = {}
        sent = 0
        for run_id, queue in found:
            subject = self.subject(self._check_queue(queue), run_id)
            if queue not in delivered:
                try:
                    info = await conn.js_api(f"CONSUMER.INFO.{self.stream}.{queue}")
                    delivered[queue] = int(info["delivered"]["stream_seq"])
                except JetStreamApiError:
                    delivered[queue] = 0  # no consumer yet: nothing was delivered
            task = await conn.direct_get(self.stream, subject)
            if task is None or task.seq > delivered[queue]:
                continue  # none, or not delivered yet: a worker will get it
            key = f"{run_id}:in-flight:{task.seq}"
            await conn.js_publish(subject, b"", headers={MSG_ID: key})
            sent += 1
        return sent

    def consumer(self, queue: str) -> PullConsumer:
        """The pull consumer of ``queue`` (created on first use)."""
        consumer = self._consumers.get(queue)
        if consumer is None:
            config = self.consumer_config(self._check_queue(queue))
            consumer = PullConsumer(self.conn, self.stream, config, expires=self.expires)
            self._consumers[queue] = consumer
        return consumer

    def queued(self, run_id: str) -> bool:
        # Those of the stream are shared: another process's worker may take them.
        return any(run_id in lane.queued for lane in self._lanes.values())

    async def receive(self, queue: str) -> JetStreamDelivery | LaneDelivery:
        consumer = self.consumer(queue)
        lane = self._lanes.get(queue)
        while True:
            if lane is None:
                msg = await consumer.next()
            else:
                run_id = lane.take(consumer.ready())
                if run_id is not None:
                    claim = lane.claims.pop(run_id, None) if lane.claims else None
                    return LaneDelivery(run_id, queue, self._give_back, claim)
                found = await consumer.next_or_poked()
                if found is None:
                    continue  # poked: a run id came to the lane
                msg = found
                if lane.items:
                    consumer.poke()  # a message came first: pass the wake-up on
            if msg.subject.startswith(f"{self.prefix}.task.{queue}."):
                return JetStreamDelivery(msg, queue, self.ack_wait / 3)
            log.warning("dropping a task on an unexpected subject", subject=msg.subject)
            await msg.term()
