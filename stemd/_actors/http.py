"""The metrics and health endpoint: ``GET /metrics`` (Prometheus text), ``GET /healthz``
(alive: 200 even while degraded) and ``GET /readyz`` (ready to work: 503 with the
dependencies away while degraded, as JSON: :class:`~stemd._health.HealthState`).

A deliberately small HTTP/1.0 server on anyio: one request per connection, bounded in size
and time, at most ``max_connections`` at once (more are closed at once), so that
misbehaving clients can neither hold the daemon nor grow its memory or its open files.

The daemon binds the socket itself with :func:`listen` before it tells systemd it is
ready, and hands it to the endpoint: a port in use or an address that does not resolve
stops ``stemd run`` at start with one line naming the setting, instead of crashing the
actor over and over.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING

import anyio
import msgspec
import structlog

from stemd._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import Listener, SocketStream, TaskStatus

    from stemd._health import HealthState
    from stemd._metrics import Registry

__all__ = ["HttpEndpoint", "HttpStats", "bind_error", "listen", "parse_address"]

log = structlog.get_logger("stemd.http")

_MAX_REQUEST = 8192
_READ_TIMEOUT = 5.0
_MAX_CONNECTIONS = 64


class HttpStats(msgspec.Struct, frozen=True, kw_only=True):
    """Requests served by the endpoint, connections open now, and connections closed
    unread (too many were open)."""

    requests: int
    open: int
    refused: int
    port: int | None


def parse_address(address: str, key: str = "metrics_address") -> tuple[str, int]:
    """``"HOST:PORT"`` → (host, port); raise ConfigError naming ``key`` otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: expected HOST:PORT, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def bind_error(key: str, address: str, exc: OSError) -> ConfigError:
    """The one-line error for a listening address that cannot be used:
    ``metrics_address 127.0.0.1:9100: address already in use``."""
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


async def listen(address: str, key: str = "metrics_address") -> Listener[SocketStream]:
    """A TCP listener bound to ``address`` (``HOST:PORT``), ready to hand to
    :class:`HttpEndpoint`.

    Raises:
        ConfigError: ``key address: reason`` (a port in use, a host that does not resolve
            or is not an address of this machine, a privileged port).
    """
    host, port = parse_address(address, key)
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        raise bind_error(key, address, exc) from None


class HttpEndpoint:
    """Serves the registry on ``address`` (port 0 picks a free port: see :attr:`port`).

    With ``listener`` (from :func:`listen`) it serves on that socket, which its owner
    closes; a restart of the actor serves on the same socket again, with no new bind.
    """

    name = "http"

    def __init__(
        self,
        registry: Registry,
        address: str,
        healthy: Callable[[], bool] | None = None,
        *,
        max_connections: int = _MAX_CONNECTIONS,
        listener: Listener[SocketStream] | None = None,
        ready: Callable[[], HealthState] | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.host, self._port = parse_address(address)
        self._listener = listener
        self.healthy = healthy or (lambda: True)
        self.port: int | None = None
        self.max_connections = max_connections
        self._open = 0
        self._requests = 0
        self._refused = 0

    def statistics(self) -> HttpStats:
        return HttpStats(
            requests=self._requests, open=self._open, refused=self._refused, port=self.port
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self._listener is not None:
            await self._serve_on(self._listener, task_status)
            return
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self._port)
        async with listener:
            await self._serve_on(listener, task_status)

    async def _serve_on(
        self, listener: Listener[SocketStream], task_status: TaskStatus[None]
    ) -> None:
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        log.info("metrics endpoint listening", host=self.host, port=self.port)
        task_status.started()
        await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        if self._open >= self.max_connections:
            self._refused += 1
            await stream.aclose()
            return
        self._open += 1
        try:
            await self._serve(stream)
        finally:
            self._open -= 1

    async def _serve(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(_READ_TIMEOUT):
                    request = await self._read_head(stream)
                status, ctype, body = await self._respond(request)
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return
            except ValueError:
                status, ctype, body = "400 Bad Request", "text/plain", b"bad request\n"
            self._requests += 1
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            try:
                await stream.send(head + body)
            except (anyio.BrokenResourceError, OSError):
                return

    async def _read_head(self, stream: SocketStream) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data:
            chunk = await stream.receive(4096)
            data += chunk
            if len(data) > _MAX_REQUEST:
                raise ValueError("request too large")
        return data

    async def _respond(self, request: bytes) -> tuple[str, str, bytes]:
        line = request.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split()
        if len(parts) < 2:
            raise ValueError("bad request line")
        method, path = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if path == "/metrics":
            text = await self.registry.render()
            return "200 OK", "text/plain; version=0.0.4; charset=utf-8", text.encode()
        if path in ("/healthz", "/health"):
            if self.healthy():
                return "200 OK", "text/plain", b"ok\n"
            return "503 Service Unavailable", "text/plain", b"unhealthy\n"
        if path == "/readyz":
            if not self.healthy():
                return "503 Service Unavailable", "text/plain", b"unhealthy\n"
            if self.ready is None:
                return "200 OK", "text/plain", b"ready\n"
            state = self.ready()
            status = "200 OK" if state.ready else "503 Service Unavailable"
            return status, "application/json", msgspec.json.encode(state) + b"\n"
        return "404 Not Found", "text/plain", b"not found\n"
