"""Ingress: durable submission of runs through JetStream.

A client publishes to ``<prefix>.submit.<workflow>`` with the params as the JSON body and
the wanted run id in the ``Nats-Msg-Id`` header. The message is stored in the work-queue
stream ``STEM_SUBMIT`` whether or not a daemon is up; a daemon's ingress takes it, starts
the run (idempotent on the run id, so a duplicate publish never makes a second run, even
after the stream's duplicate window) and acknowledges it once the run is created.

The ``Stem-Priority`` and ``Stem-Dedup-Key`` headers are the ``start`` verb's ``priority``
and ``dedup_key``: a submission whose key a live run of the workflow was started with
(within its dedup window) starts nothing and is acknowledged.

A message that can never become a run (unknown workflow, invalid run id, params that are
not JSON, a priority or dedup key out of bounds) is logged and terminated; a failure of
the store is retried. A well-formed W3C ``traceparent`` header is recorded with the run
(its spans continue the submitter's trace); a malformed one is ignored.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from stemd import _wire as wire
from stemd._broker.jetstream import stream_name
from stemd._broker.pull import JsMsg, PullConsumer
from stemd._errors import (
    DECODE_ERRORS,
    InvalidRunId,
    PayloadError,
    StemError,
    StoreError,
    TransportError,
)
from stemd._natsconn import MSG_ID, NatsConnection
from stemd._tracing import traceparent_from

if TYPE_CHECKING:
    from collections.abc import Mapping

    from anyio.abc import TaskStatus

    from stemd._operations import Operations

__all__ = ["Ingress", "IngressStats", "submit_options", "submit_stream_config"]

log = structlog.get_logger("stemd.ingress")

_NS = 1_000_000_000
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")


def submit_stream_config(
    prefix: str = wire.DEFAULT_PREFIX,
    *,
    stream: str | None = None,
    replicas: int = 1,
    storage: str = "file",
    duplicate_window: float = 3600.0,
) -> dict[str, Any]:
    """The configuration of the submission stream (default name ``<PREFIX>_SUBMIT``)."""
    return {
        "name": stream or stream_name(prefix, "SUBMIT"),
        "subjects": [f"{prefix}.submit.>"],
        "retention": "workqueue",
        "storage": storage,
        "num_replicas": replicas,
        "duplicate_window": int(duplicate_window * _NS),
    }


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """The value of header ``name`` (in any case), or ``None``."""
    if not headers:
        return None
    value = headers.get(name)
    if value is None:
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), None)
    return value


def submit_options(headers: Mapping[str, str] | None) -> dict[str, Any]:
    """The start options a submission's headers give: ``priority`` (``Stem-Priority``, an
    integer) and ``dedup_key`` (``Stem-Dedup-Key``); their bounds are checked by the start.

    Raises:
        StemError: ``Stem-Priority`` is not an integer.
    """
    options: dict[str, Any] = {}
    priority = _header(headers, wire.PRIORITY_HEADER)
    if priority is not None:
        if not _INTEGER.fullmatch(priority.strip()):
            raise StemError(
                f"{wire.PRIORITY_HEADER}: priority must be an integer from -1000 to 1000, "
                f"not {priority[:40]!r}"
            )
        options["priority"] = int(priority.strip())
    dedup_key = _header(headers, wire.DEDUP_KEY_HEADER)
    if dedup_key is not None:
        options["dedup_key"] = dedup_key
    return options


class IngressStats(msgspec.Struct, frozen=True, kw_only=True):
    """Submissions handled so far."""

    started: int
    duplicates: int
    rejected: int


class Ingress:
    """The ``<prefix>.submit.>`` consumer actor.

    Args:
        ops: starts the runs (an App).
        conn: the NATS connection.
        prefix: the subject prefix.
        stream: the submission stream's name (default ``<PREFIX>_SUBMIT``).
        concurrency: submissions handled at once.
    """

    name = "ingress"

    def __init__(
        self,
        ops: Operations,
        conn: NatsConnection,
        *,
        prefix: str = wire.DEFAULT_PREFIX,
        stream: str | None = None,
        replicas: int = 1,
        storage: str = "file",
        concurrency: int = 16,
        ack_wait: float = 30.0,
    ) -> None:
        self.ops = ops
        self.conn = conn
        self.prefix = prefix
        self.stream = stream or stream_name(prefix, "SUBMIT")
        self.replicas = replicas
        self.storage = storage
        self.concurrency = concurrency
        self.ack_wait = ack_wait
        self._started = 0
        self._duplicates = 0
        self._rejected = 0

    def statistics(self) -> IngressStats:
        return IngressStats(
            started=self._started, duplicates=self._duplicates, rejected=self._rejected
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.conn.ensure_stream(
            submit_stream_config(
                self.prefix, stream=self.stream, replicas=self.replicas, storage=self.storage
            )
        )
        consumer = PullConsumer(
            self.conn,
            self.stream,
            {
                "durable_name": "ingress",
                "filter_subject": f"{self.prefix}.submit.>",
                "ack_policy": "explicit",
                "ack_wait": int(self.ack_wait * _NS),
                "deliver_policy": "all",
                "max_ack_pending": 10_000,
            },
        )
        await consumer.ensure()
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(self.concurrency):
                    tg.start_soon(self._work, consumer)
        finally:
            with anyio.CancelScope(shield=True):
                await consumer.close()

    async def _work(self, consumer: PullConsumer) -> None:
        while True:
            msg = await consumer.next()
            try:
                await self.handle(msg)
            except (StoreError, TransportError) as exc:
                log.warning("submission not handled; will retry", error=str(exc))
                await msg.nak(1.0)
            except Exception as exc:
                # A bug with this one submission must not take the ingress (and, past the
                # restart budget, the daemon) down: it is logged and redelivered later,
                # ever less often, never dropped.
                delay = msg.retry_delay()
                log.exception(
                    "submission failed unexpectedly; will retry",
                    subject=msg.subject,
                    stream_seq=msg.stream_seq,
                    deliveries=msg.num_delivered,
                    retry_in=delay,
                    error=repr(exc),
                )
                await msg.nak(delay)

    async def handle(self, msg: JsMsg) -> None:
        """Start the run one submission asks for, then acknowledge it."""
        workflow = msg.subject[len(self.prefix) + 8 :]
        run_id = msg.header(MSG_ID) or f"submit-{msg.stream_seq}"
        try:
            params = msgspec.json.decode(msg.data) if msg.data.strip() else None
        except DECODE_ERRORS as exc:
            return await self._reject(msg, workflow, run_id, f"params are not JSON: {exc}")
        try:
            options = submit_options(msg.headers)
            started, created = await self.ops.start_run(
                workflow, params, run_id=run_id, trace=traceparent_from(msg.headers), **options
            )
        except (StoreError, TransportError):
            raise
        except (InvalidRunId, PayloadError, StemError) as exc:
            return await self._reject(msg, workflow, run_id, str(exc))
        if created:
            self._started += 1
        else:
            self._duplicates += 1
            if started != run_id:  # a live run holds its dedup key
                log.info("submission deduplicated", workflow=workflow, run_id=started)
        await msg.ack()

    async def _reject(self, msg: JsMsg, workflow: str, run_id: str, why: str) -> None:
        self._rejected += 1
        log.warning("submission rejected", workflow=workflow, run_id=run_id, reason=why)
        await msg.term()
