"""The JetStream KV store's record of the workflows daemons serve (``stemd workflow types``).

One key per workflow in the runs' bucket: ``wf.<name>``, with the name in unpadded
base64url (a workflow name may hold characters a KV key may not, and the encoding keeps
``run.*`` and ``idx.>`` listings blind to these keys). The value is the
:class:`~stemd._store.base.WorkflowInfo` as JSON, so ``nats kv get`` shows it. A
registration is a plain put: the last one wins, as in the other stores. The bucket keeps
one revision per key.

These are functions of an open connection; :class:`~stemd._store.jetstream.JetStreamStore`
delegates to them.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
import structlog

from stemd._errors import DECODE_ERRORS
from stemd._store.base import WorkflowInfo

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._natsconn import NatsConnection, StoredMsg

__all__ = ["key", "register_workflows", "registered_workflows"]

log = structlog.get_logger("stemd.store.jetstream")

T = TypeVar("T")
Retry = Callable[..., Awaitable[Any]]

_PREFIX = "wf."
_CHUNK = 1000
_decoder = msgspec.json.Decoder(WorkflowInfo)


def key(name: str) -> str:
    """The KV key of workflow ``name``: ``wf.`` and the name in unpadded base64url."""
    return _PREFIX + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


async def _plain(what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await fn(*args)


async def register_workflows(
    conn: NatsConnection,
    bucket: str,
    workflows: Sequence[WorkflowInfo],
    now: datetime,
    *,
    retry: Retry = _plain,
) -> None:
    """Put one key per workflow, registered at ``now``. ``retry(what, fn, *args)`` runs
    each request (the store's retry on transient NATS failures)."""
    for info in workflows:
        data = msgspec.json.encode(msgspec.structs.replace(info, registered_at=now))
        await retry("put", conn.js_publish, f"$KV.{bucket}.{key(info.name)}", data)


async def registered_workflows(
    conn: NatsConnection, stream: str, bucket: str, *, retry: Retry = _plain
) -> list[WorkflowInfo]:
    """Every workflow recorded in the bucket, by name. A value that does not decode
    (written by hand) is skipped with a warning."""
    pattern = f"$KV.{bucket}.{_PREFIX}*"
    found: list[StoredMsg] | None = await retry(
        "list", conn.direct_get_last_many, stream, [pattern]
    )
    if found is None:  # more than one batched get returns: list the keys, then read them
        subjects = list(await retry("list", conn.stream_subjects, stream, pattern))
        found = []
        for i in range(0, len(subjects), _CHUNK):
            chunk = subjects[i : i + _CHUNK]
            found += await retry("get", conn.direct_get_last_many, stream, chunk) or []
    out: dict[str, WorkflowInfo] = {}
    for msg in found:
        if not msg.data:  # a deleted key
            continue
        try:
            info = _decoder.decode(msg.data)
        except DECODE_ERRORS as exc:
            log.warning("undecodable workflow entry", subject=msg.subject, error=str(exc))
            continue
        out[info.name] = info
    return [out[name] for name in sorted(out)]
