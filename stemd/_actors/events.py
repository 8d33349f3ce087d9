"""The run-event publisher: every status change of a run, published on NATS.

The engine reports changes synchronously to its listeners; the listener here only puts
them into a bounded queue (dropping, and counting, when it is full: events are
notifications, the store is the truth), and this actor publishes them as core NATS
messages on ``<prefix>.events.run.<run_id>``, in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from stemd import _wire as wire
from stemd._errors import StemError
from stemd._model import RunStatus

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskStatus

    from stemd._engine.events import RunEvent
    from stemd._natsconn import NatsConnection
    from stemd._operations import RunEventSource

__all__ = ["EventPublisher", "EventStats"]

log = structlog.get_logger("stemd.events")


class EventStats(msgspec.Struct, frozen=True, kw_only=True):
    """Events published and dropped so far."""

    published: int
    dropped: int


class EventPublisher:
    """Publishes run events on ``<prefix>.events.run.<run_id>``.

    Args:
        events: whose events to publish (the engine's).
        conn: the NATS connection.
        decode: decodes a completed run's stored result.
        prefix: the subject prefix.
        buffer: events held while NATS is slow; beyond it new events are dropped.
    """

    name = "events"

    def __init__(
        self,
        events: RunEventSource,
        conn: NatsConnection,
        *,
        decode: Callable[[bytes], Any],
        prefix: str = wire.DEFAULT_PREFIX,
        buffer: int = 10_000,
    ) -> None:
        self.events = events
        self.decode = decode
        self.conn = conn
        self.prefix = prefix
        self.buffer = buffer
        self._published = 0
        self._dropped = 0

    def statistics(self) -> EventStats:
        return EventStats(published=self._published, dropped=self._dropped)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # A plain queue and one event: a memory object stream's checkpoints per event
        # cost more than the publish (three events per run).
        pending: deque[tuple[RunEvent, bytes | None]] = deque()
        ready = asyncio.Event()

        def forward(event: RunEvent, raw_result: bytes | None) -> None:
            if len(pending) >= self.buffer:
                self._dropped += 1
                return
            pending.append((event, raw_result))
            ready.set()

        stop = self.events.listen(forward)
        try:
            task_status.started()
            while True:
                await ready.wait()
                ready.clear()
                while pending:
                    event, raw = pending.popleft()
                    await self._publish(event, raw)
        finally:
            stop()

    def message(self, event: RunEvent, raw_result: bytes | None) -> bytes:
        """The JSON published for one event."""
        result: object = msgspec.UNSET
        if event.status is RunStatus.COMPLETED:
            try:
                result = self.decode(raw_result) if raw_result is not None else None
            except StemError:
                result = None
        msg = wire.RunEventMsg(
            run_id=event.run_id,
            workflow=event.workflow,
            status=event.status,
            result=result,
            error=event.error if event.status is RunStatus.FAILED else None,
            cancel_reason=event.cancel_reason if event.status is RunStatus.CANCELLED else None,
        )
        try:
            return wire.encode(msg)
        except (TypeError, ValueError):
            return wire.encode(msgspec.structs.replace(msg, result=None))

    async def _publish(self, event: RunEvent, raw: bytes | None) -> None:
        try:
            await self.conn.publish(
                wire.event_subject(self.prefix, event.run_id), self.message(event, raw)
            )
            self._published += 1
        except StemError as exc:
            self._dropped += 1
            log.warning("run event not published", run_id=event.run_id, error=str(exc))
