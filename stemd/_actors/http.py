"""The daemon's HTTP server: one ASGI application (metrics, health, the JSON API and the
dashboard: :mod:`stemd._web`) served by uvicorn inside the daemon's own event loop.

The daemon binds the socket itself with :func:`listen` before it tells systemd it is
ready, and hands it to the endpoint: a port in use or an address that does not resolve
stops ``stemd run`` at start with one line naming the setting, instead of crashing the
actor over and over. The endpoint serves a duplicate of that socket, so a restart of the
actor by the supervisor serves the same port again with no new bind.

Uvicorn, not hypercorn: two small dependencies (h11, click) against seven, and its
:class:`uvicorn.Server` can be driven step by step (start, serve, shut down) from an anyio
task, without the signal handlers and the event loop it installs when it runs a process.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from stemd._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskStatus

__all__ = ["HttpEndpoint", "HttpStats", "bind_error", "listen", "parse_address"]

log = structlog.get_logger("stemd.http")

_SHUTDOWN_GRACE = 2.0  # seconds open requests get to finish when the endpoint stops
_MAX_CONNECTIONS = 256


class HttpStats(msgspec.Struct, frozen=True, kw_only=True):
    """Requests served by the endpoint, connections open now, and its port."""

    requests: int
    open: int
    port: int | None


def parse_address(address: str, key: str = "http_address") -> tuple[str, int]:
    """``"HOST:PORT"`` → (host, port); raise ConfigError naming ``key`` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def bind_error(key: str, address: str, exc: OSError) -> ConfigError:
    """The one-line error for a listening address that cannot be used:
    ``http_address 127.0.0.1:8080: address already in use``."""
    host = parse_address(address, key)[0]
    if isinstance(exc, socket.gaierror):
        reason = f"cannot resolve {host!r} ({exc.strerror or exc})"
    elif exc.errno is not None and exc.errno > 0:
        reason = os.strerror(exc.errno)
        if exc.errno in (errno.EACCES, errno.EPERM):
            reason += " (ports below 1024 need privileges)"
    else:
        reason = str(exc)
    return ConfigError(f"{key} {address}: {reason[:1].lower()}{reason[1:]}")


async def listen(address: str, key: str = "http_address") -> socket.socket:
    """A listening TCP socket bound to ``address`` (``HOST:PORT``), ready to hand to
    :class:`HttpEndpoint`; its owner closes it.

    Raises:
        ConfigError: ``key address: reason`` (a port in use, a host that does not resolve
            or is not an address of this machine, a privileged port).
    """
    host, port = parse_address(address, key)
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, sockaddr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise bind_error(key, address, exc) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise bind_error(key, address, exc) from None
    return sock


class HttpEndpoint:
    """Serves the ASGI application ``asgi`` on ``address`` (port 0 picks a free port: see
    :attr:`port`), or on ``listener`` (from :func:`listen`) when given.

    Args:
        asgi: the application (:func:`stemd._web.build_web`).
        address: ``HOST:PORT``, used when there is no ``listener``.
        listener: a bound, listening socket; the endpoint serves a duplicate of it and
            never closes it.
        on_stop: called when the endpoint begins to stop (the application ends its
            live streams so that the shutdown does not wait for them).
        max_connections: connections served at once; more are refused with 503.
    """

    name = "http"

    def __init__(
        self,
        asgi: Any,
        address: str = "127.0.0.1:0",
        *,
        listener: socket.socket | None = None,
        on_stop: Callable[[], None] | None = None,
        max_connections: int = _MAX_CONNECTIONS,
    ) -> None:
        self.asgi = asgi
        self.address = address
        self._listener = listener
        self._on_stop = on_stop
        self.max_connections = max_connections
        self.port: int | None = None
        self._server: Any = None
        self._requests = 0

    def statistics(self) -> HttpStats:
        state = self._server.server_state if self._server is not None else None
        return HttpStats(
            requests=self._requests + (state.total_requests if state else 0),
            open=len(state.connections) if state else 0,
            port=self.port,
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        import uvicorn

        if self._listener is not None:
            sock = self._listener.dup()
        else:
            sock = await listen(self.address)
        config = uvicorn.Config(
            self.asgi,
            lifespan="off",
            log_config=None,
            access_log=False,
            http="h11",
            ws="none",
            server_header=False,
            date_header=False,
            proxy_headers=False,
            limit_concurrency=self.max_connections,
            timeout_graceful_shutdown=int(_SHUTDOWN_GRACE),
        )
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._server = server
        await server.on_tick(0)  # the default headers
        self.port = sock.getsockname()[1]
        log.info("http endpoint listening", address=self.address, port=self.port)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            if self._on_stop is not None:
                self._on_stop()
            with anyio.CancelScope(shield=True), anyio.move_on_after(_SHUTDOWN_GRACE + 1):
                await server.shutdown(sockets=[sock])
            self._requests += server.server_state.total_requests
            self._server = None
