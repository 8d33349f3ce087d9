"""The NATS surface of an App: one connection serving the API, ingress and run events."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio

from stemd._actors.api import ApiResponder
from stemd._actors.events import EventPublisher
from stemd._actors.ingress import Ingress
from stemd._errors import ConfigError
from stemd._identifiers import is_prefix
from stemd._natsauth import NatsAuth, redact_url
from stemd._natsconn import open_connection, split_url

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from stemd._actors.supervisor import Actor
    from stemd._operations import Operations, RunEventSource

__all__ = ["open_nats_surface"]


@asynccontextmanager
async def open_nats_surface(
    ops: Operations,
    events: RunEventSource,
    url: str,
    prefix: str,
    *,
    decode: Callable[[bytes], Any],
    name: str,
    auth: NatsAuth | None = None,
) -> AsyncIterator[list[Actor]]:
    """Connect to ``url`` (with the credentials and TLS of ``auth``, as client ``name``)
    and yield the actors that serve ``<prefix>.api.*`` and consume ``<prefix>.submit.>``
    with ``ops``, and publish ``events`` on ``<prefix>.events.run.*`` (a completed run's
    result decoded with ``decode``). The connection is closed on exit.

    The URL may carry ``replicas`` and ``storage`` for the submission stream.

    Raises:
        ConfigError: the prefix or an option is invalid.
        TransportError: NATS is unreachable.
    """
    if not is_prefix(prefix):
        raise ConfigError(f"nats prefix: invalid subject prefix {prefix!r}")
    _, query = split_url(url)
    try:
        replicas = int(query.get("replicas", 1))
    except ValueError:
        raise ConfigError(f"nats: bad replicas in {redact_url(url)!r}") from None
    storage = query.get("storage", "file")
    if storage not in ("file", "memory"):
        raise ConfigError(f"nats: storage must be 'file' or 'memory', not {storage!r}")
    conn = await open_connection(url, name=name, auth=auth)
    try:
        yield [
            EventPublisher(events, conn, decode=decode, prefix=prefix),
            ApiResponder(ops, conn, prefix=prefix),
            Ingress(ops, conn, prefix=prefix, replicas=replicas, storage=storage),
        ]
    finally:
        with anyio.move_on_after(10, shield=True):
            await conn.close()
