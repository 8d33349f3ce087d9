"""Whether the URLs of a configuration can be used, checked before anything starts: a
SQLite file that can be written, NATS servers that accept a connection with the
configured credentials and TLS. Every failure is a :class:`~stemd._errors.ConfigError`
naming the key (or the command-line flag) at fault.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from stemd._errors import ConfigError, TransportError
from stemd._natsauth import NatsAuth, redact_url
from stemd._urls import is_nats, is_sqlite, nats_servers, sqlite_path

if TYPE_CHECKING:
    from stemd._config import Config

__all__ = ["NatsUnreachable", "check_nats", "check_reachable", "check_sqlite"]


class NatsUnreachable(ConfigError):
    """No server of a NATS URL accepted a TCP connection (refused, timed out, a name that
    does not resolve): an outage as much as a mistake, so ``stemd run`` waits for it
    (degraded) instead of exiting. A server that answers but refuses the credentials or
    the TLS handshake is a plain :class:`ConfigError`."""


async def check_reachable(config: Config, *, timeout: float = 2.0) -> None:
    """Check that every URL of ``config`` can be used: a SQLite file's directory exists and
    is writable; some server of each NATS URL accepts a connection with the credentials
    and TLS of ``[nats_auth]`` (a NATS handshake, not only TCP).

    Raises:
        NatsUnreachable: naming the key of a NATS URL that no server answers on.
        ConfigError: naming the key whose URL is invalid, or refused the credentials.
    """
    if is_sqlite(config.store):
        check_sqlite("store", config.store)
    seen: set[str] = set()
    for key in ("store", "broker", "nats"):
        url = getattr(config, key)
        if url is None or not is_nats(url) or url in seen:
            continue
        seen.add(url)
        await check_nats(key, url, timeout=timeout, auth=config.nats_auth)


def check_sqlite(key: str, url: str) -> None:
    """Raise :class:`ConfigError` unless the database of ``url`` can be opened for writing."""
    path = Path(sqlite_path(url))
    directory = path.parent if str(path.parent) else Path(".")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"{key}: {path} is not readable and writable by this user")
    elif not directory.is_dir():
        raise ConfigError(f"{key}: cannot create {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: directory {directory} is not writable by this user")


async def check_nats(
    key: str,
    url: str,
    *,
    timeout: float = 2.0,
    auth: NatsAuth | None = None,
    handshake: bool = True,
) -> None:
    """Raise :class:`ConfigError` unless some server of ``url`` accepts a TCP connection
    and then (with ``handshake``) a NATS connection with ``auth``: a server that refuses
    the credentials or whose TLS certificate is not trusted is as unusable as a closed
    port, but is not an outage: only the closed port raises :class:`NatsUnreachable`."""
    errors: list[str] = []
    parts = [part.strip() for part in url.split(",")]
    for (host, port), part in zip(nats_servers(key, url), parts, strict=True):
        try:
            with anyio.fail_after(timeout):
                stream = await anyio.connect_tcp(host, port)
            await stream.aclose()
        except TimeoutError:
            errors.append(f"{host}:{port} timed out")
            continue
        except (OSError, socket.gaierror) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            errors.append(f"{host}:{port}: {cause.strerror or cause}")
            continue
        if handshake:
            await _check_handshake(key, part if "://" in part else f"nats://{part}", auth, timeout)
        return
    raise NatsUnreachable(f"{key}: cannot reach {redact_url(url)} ({'; '.join(errors)})")


async def _check_handshake(key: str, url: str, auth: NatsAuth | None, timeout: float) -> None:
    from stemd._natsconn import open_connection  # nats-py only when there is NATS to check

    try:
        conn = await open_connection(
            url,
            auth=auth,
            name="stemd-config-check",
            timeout=timeout,
            connect_timeout=timeout,
            connect_attempts=1,
        )
    except TransportError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    await conn.close()
