"""Store, broker and NATS URLs: what a URL's scheme names, read in one place.

==================  ==========  =========================================
URL                 kind        what it names
==================  ==========  =========================================
``memory://``       ``memory``  the in-memory store (tests, one process)
``sqlite:///PATH``  ``sqlite``  the SQLite store in the file PATH
``nats://H:P``      ``nats``    JetStream: KV store, work-queue broker, API
``tls://H:P``       ``nats``    the same, over TLS
``local://``        ``local``   the in-process broker (also: no URL)
==================  ==========  =========================================

``memory`` and ``local`` are accepted without ``://``. A NATS URL may list several
servers, comma-separated.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import unquote, urlsplit

from stemd._errors import ConfigError
from stemd._natsauth import redact_url

__all__ = [
    "StoreKind",
    "UrlKind",
    "is_loopback",
    "is_nats",
    "is_sqlite",
    "nats_servers",
    "sqlite_path",
    "store_kind",
    "url_kind",
]

UrlKind = Literal["memory", "sqlite", "nats", "local"]
StoreKind = Literal["memory", "sqlite", "nats"]

_NATS_SCHEMES = ("nats://", "tls://")


def url_kind(url: str) -> UrlKind | None:
    """The kind of store or broker ``url`` names, or ``None`` for a scheme stemd lacks."""
    if url in ("memory://", "memory"):
        return "memory"
    if url.startswith("sqlite://"):
        return "sqlite"
    if url.startswith(_NATS_SCHEMES):
        return "nats"
    if url in ("local://", "local"):
        return "local"
    return None


def is_nats(url: str | None) -> bool:
    """Whether ``url`` names a NATS server (``nats://`` or ``tls://``)."""
    return url is not None and url_kind(url) == "nats"


def is_sqlite(url: str | None) -> bool:
    """Whether ``url`` names a SQLite store."""
    return url is not None and url_kind(url) == "sqlite"


def store_kind(url: str, key: str = "store") -> StoreKind:
    """The kind of store ``url`` names.

    Raises:
        ConfigError: not a store URL (naming ``key``; credentials masked).
    """
    kind = url_kind(url)
    if kind is None or kind == "local":
        raise ConfigError(
            f"{key}: unsupported URL {redact_url(url)!r} "
            "(use memory://, sqlite:///PATH or nats://HOST:PORT)"
        )
    return kind


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///PATH`` URL, read as the SQLite store reads it: what follows
    the third slash, so ``sqlite:///stemd.db`` and ``sqlite:///./stemd.db`` are relative to
    the working directory and ``sqlite:////var/lib/stemd/stemd.db`` is absolute."""
    return unquote(url[len("sqlite:///") :].partition("?")[0])


def nats_servers(key: str, url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a NATS URL; several servers may be comma-separated, and a
    server without a scheme is read as ``nats://``.

    Raises:
        ConfigError: a server with no host or an invalid port (naming ``key``).
    """
    servers = []
    for part in url.split(","):
        part = part.strip()
        if "://" not in part:
            part = "nats://" + part
        try:
            split = urlsplit(part)
            host, port = split.hostname, split.port or 4222
        except ValueError as exc:
            raise ConfigError(f"{key}: invalid NATS URL {redact_url(url)!r}: {exc}") from None
        if not host:
            raise ConfigError(f"{key}: invalid NATS URL {redact_url(url)!r}: no host")
        servers.append((host, port))
    return servers


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
