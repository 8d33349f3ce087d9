"""The NATS surface of an App: one connection serving the API, ingress and run events."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from stemd.actors.api import ApiResponder
from stemd.actors.events import EventPublisher
from stemd.actors.ingress import Ingress
from stemd.errors import ConfigError
from stemd.natsauth import NatsAuth, redact_url
from stemd.natsconn import NatsConnection, open_connection, split_url

if TYPE_CHECKING:
    from stemd.app import App

__all__ = ["open_nats_surface"]

_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


async def open_nats_surface(
    app: App, url: str, prefix: str, *, auth: NatsAuth | None = None
) -> tuple[NatsConnection, list[Any]]:
    """Connect to ``url`` (with the credentials and TLS of ``auth``) and make the actors
    that serve ``<prefix>.api.*``, consume ``<prefix>.submit.>`` and publish
    ``<prefix>.events.run.*`` for ``app``.

    The URL may carry ``replicas`` and ``storage`` for the submission stream.

    Raises:
        ConfigError: the prefix or an option is invalid.
        TransportError: NATS is unreachable.
    """
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigError(f"nats prefix: invalid subject prefix {prefix!r}")
    _, query = split_url(url)
    try:
        replicas = int(query.get("replicas", 1))
    except ValueError:
        raise ConfigError(f"nats: bad replicas in {redact_url(url)!r}") from None
    storage = query.get("storage", "file")
    if storage not in ("file", "memory"):
        raise ConfigError(f"nats: storage must be 'file' or 'memory', not {storage!r}")
    conn = await open_connection(url, name=f"stemd-api:{app.owner}", auth=auth)
    engine = app.engine
    actors: list[Any] = [
        EventPublisher(engine, conn, prefix=prefix),
        ApiResponder(app, conn, prefix=prefix),
        Ingress(engine, conn, prefix=prefix, replicas=replicas, storage=storage),
    ]
    return conn, actors
