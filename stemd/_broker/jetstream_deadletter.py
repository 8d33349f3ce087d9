"""The dead-letter actor: moves tasks delivered too often out of the work queue.

JetStream stops delivering a message after the consumer's ``max_deliver`` and announces it
with a MAX_DELIVERIES advisory, but leaves the message in the stream. The broker captures
those advisories into a work-queue stream (they are plain NATS messages, lost if nobody
listens); this actor takes each one, copies the task into the dead-letter stream with
headers saying where it came from, deletes it from the work queue and, when given a way to
cancel runs, cancels the run with reason ``dead-lettered`` so that the sweeper does not
hand the poison task out again. Several daemons share the advisory consumer: each advisory
is handled once, and every step is idempotent anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import anyio
import msgspec
import structlog

from stemd._broker.capabilities import WorkQueueStreams
from stemd._broker.pull import JsMsg, PullConsumer
from stemd._errors import DECODE_ERRORS, StemError

if TYPE_CHECKING:
    from anyio.abc import TaskStatus


__all__ = ["CancelRun", "DeadLetterStats", "DeadLetters", "DeadLetterSource"]

#: Cancels a run with a reason; whether it did (``Engine.cancel`` is one).
CancelRun = Callable[[str, str], Awaitable[bool]]


class DeadLetterSource(WorkQueueStreams, Protocol):
    """What the actor needs of the broker (a
    :class:`~stemd._broker.jetstream.JetStreamBroker` has it)."""

    @property
    def advisory_stream(self) -> str: ...


log = structlog.get_logger("stemd.deadletter")


class _Advisory(msgspec.Struct, frozen=True):
    stream: str = ""
    consumer: str = ""
    stream_seq: int = 0
    deliveries: int = 0


_advisory = msgspec.json.Decoder(_Advisory)


class DeadLetterStats(msgspec.Struct, frozen=True, kw_only=True):
    """What the actor has done."""

    dead_lettered: int
    cancelled: int


class DeadLetters:
    """Handles MAX_DELIVERIES advisories of a :class:`~stemd._broker.jetstream.JetStreamBroker`.

    Args:
        broker: the broker whose work queue is watched.
        cancel: cancels a dead-lettered run (``None``: leave it be).
    """

    name = "deadletters"

    def __init__(self, broker: DeadLetterSource, cancel: CancelRun | None = None) -> None:
        self.broker = broker
        self.cancel = cancel
        self._dead = 0
        self._cancelled = 0

    def statistics(self) -> DeadLetterStats:
        return DeadLetterStats(dead_lettered=self._dead, cancelled=self._cancelled)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        broker = self.broker
        config = {
            "durable_name": "deadletters",
            "ack_policy": "explicit",
            "ack_wait": 30 * 1_000_000_000,
            "deliver_policy": "all",
        }
        consumer = PullConsumer(broker.conn, broker.advisory_stream, config, expires=5.0)
        await consumer.ensure()
        task_status.started()
        try:
            while True:
                msg = await consumer.next()
                try:
                    await self.handle(msg)
                except StemError as exc:
                    log.warning("dead letter not handled; will retry", error=str(exc))
                    await msg.nak(1.0)
                    continue
                except Exception as exc:
                    # A bug with one advisory must not take the actor down: logged and
                    # redelivered later, ever less often.
                    delay = msg.retry_delay()
                    log.exception(
                        "dead letter failed unexpectedly; will retry",
                        deliveries=msg.num_delivered,
                        retry_in=delay,
                        error=repr(exc),
                    )
                    await msg.nak(delay)
                    continue
                await msg.ack()
        finally:
            with anyio.CancelScope(shield=True):
                await consumer.close()

    async def handle(self, msg: JsMsg) -> None:
        """Move the task named by one advisory to the dead-letter stream."""
        try:
            advisory = _advisory.decode(msg.data)
        except DECODE_ERRORS:
            log.warning("undecodable advisory dropped", data=msg.data[:200])
            return
        broker = self.broker
        if advisory.stream != broker.stream or advisory.stream_seq <= 0:
            return
        conn = broker.conn
        # From the leader: a lagging replica may not have the task yet, and a task
        # wrongly found missing would stay in the work queue, undelivered, for good.
        task = await conn.leader_get(broker.stream, seq=advisory.stream_seq)
        if task is None:
            return  # acked or already moved
        _, _, rest = task.subject.partition(f"{broker.prefix}.task.")
        queue, _, run_id = rest.rpartition(".")
        await conn.js_publish(
            f"{broker.prefix}.dlq.{queue}.{run_id}",
            task.data,
            headers={
                "Nats-Msg-Id": f"dlq:{broker.stream}:{advisory.stream_seq}",
                "Stem-Subject": task.subject,
                "Stem-Stream-Seq": str(advisory.stream_seq),
                "Stem-Deliveries": str(advisory.deliveries),
                "Stem-Consumer": advisory.consumer,
            },
        )
        await conn.delete_msg(broker.stream, advisory.stream_seq)
        self._dead += 1
        log.warning(
            "task dead-lettered",
            run_id=run_id,
            queue=queue,
            deliveries=advisory.deliveries,
        )
        if self.cancel is not None and run_id:
            reason = f"dead-lettered after {advisory.deliveries} deliveries"
            if await self.cancel(run_id, reason):
                self._cancelled += 1
