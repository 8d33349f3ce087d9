"""``stemd run`` started while NATS is unreachable: wait for it, degraded, instead of exiting.

The daemon checks its URLs before it opens anything (:func:`check_reachable`). A NATS URL
that no server answers on (:class:`NatsUnreachable`: refused, timed out, a name that does
not resolve) is an outage as likely as a mistake (NATS still down at boot), so the daemon
does what a running one does when NATS goes away: it stays up, **degraded**. It

- logs one ``degraded`` line (``source="start"``) and, when NATS answers, one
  ``recovered`` line;
- tells systemd ``READY=1`` with ``STATUS=degraded (nats: ...): waiting to start``: the
  service is up (``systemctl start`` returns, nothing waits on a start timeout), as a
  running daemon whose NATS went away stays up; the watchdog is pinged;
- serves ``/healthz`` (200) and ``/readyz`` (503, the degraded state as JSON) on the
  socket already bound for ``http_address``; every other path answers 503;
- checks again with backoff (0.5 s doubling to ``restart.max_backoff``), and returns as
  soon as every URL answers: the App then opens as usual (``STATUS=running``).

Anything else found at start (an invalid URL, refused credentials, an untrusted
certificate, an unwritable SQLite directory) is still a :class:`ConfigError` that stops
the daemon at once, also when it is found after a wait.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from stemd._health import Health
from stemd._reachability import NatsUnreachable, check_reachable

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from stemd._actors.notify import Notifier
    from stemd._config import Config

__all__ = ["SOURCE", "StartWait"]

log = structlog.get_logger("stemd.daemon")

SOURCE = "start"  # the source of the health report made while waiting
_FIRST_BACKOFF = 0.5


class StartWait:
    """The waits of one ``stemd run`` for its NATS before its App is open.

    Args:
        config: the configuration whose URLs are checked.
        notifier: systemd.
        listener: the socket bound for ``http_address`` (``None``: no HTTP).
        on_hangup: called on SIGHUP while waiting (the daemon's reload).
    """

    def __init__(
        self,
        config: Config,
        notifier: Notifier,
        *,
        listener: socket.socket | None = None,
        on_hangup: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.notifier = notifier
        self.listener = listener
        self.on_hangup = on_hangup
        self.health = Health()
        self.max_backoff = config.app_options().restart.max_backoff
        self.backoff = _FIRST_BACKOFF
        self.is_open = False

    async def until_reachable(self, away: BaseException | None = None) -> bool:
        """Return ``True`` once every URL of the configuration can be used, waiting
        (degraded) for as long as a NATS URL is unreachable; ``False`` if SIGTERM or
        SIGINT came first. ``away``: the App could not open for want of NATS (it takes
        connections but does not answer yet, e.g. JetStream still starting): wait before
        trying again, longer each time.

        Raises:
            ConfigError: a URL is invalid or refuses the credentials or TLS (at once or
                after a wait), or the SQLite directory cannot be written.
        """
        if away is None:
            try:
                await check_reachable(self.config)
                return True
            except NatsUnreachable as exc:
                away = exc
        self.health.report(SOURCE, "nats", str(away))  # logged once, not per try
        return await self._wait()

    def opened(self) -> None:
        """The App is open: the wait, if any, is over (``recovered`` is logged)."""
        self.is_open = True
        self.health.clear(SOURCE)

    def status(self) -> str:
        return f"{self.health.state().describe()}: waiting to start"

    async def _wait(self) -> bool:
        from stemd._actors.http import HttpEndpoint

        listener, on_hangup = self.listener, self.on_hangup

        stops = (signal.SIGTERM, signal.SIGINT)
        reachable = False
        with anyio.open_signal_receiver(*stops, signal.SIGHUP) as signals:
            async with anyio.create_task_group() as tg:

                async def until_stopped() -> None:
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            if on_hangup is not None:
                                on_hangup()
                            continue
                        log.info("stopping", signal=signal.Signals(signum).name)
                        tg.cancel_scope.cancel()

                tg.start_soon(until_stopped)
                if listener is not None:
                    endpoint = HttpEndpoint(self, listener=listener)  # self: the ASGI app
                    await tg.start(endpoint.run)
                # Up: signals handled, /readyz answering (503).
                self.notifier.send("READY=1", f"STATUS={self.status()}", f"MAINPID={os.getpid()}")
                if self.notifier.watchdog_interval is not None:
                    tg.start_soon(self._watchdog, self.notifier.watchdog_interval)
                await self._retry()
                reachable = True
                tg.cancel_scope.cancel()
        if not reachable:
            self.notifier.send("STOPPING=1", "STATUS=stopping")
        return reachable

    async def _retry(self) -> None:
        while True:
            await anyio.sleep(self.backoff)
            self.backoff = min(self.max_backoff, self.backoff * 2)
            try:
                await check_reachable(self.config)
            except NatsUnreachable as exc:
                self.health.report(SOURCE, "nats", str(exc))  # logged once, not per try
                log.debug("nats still unreachable", error=str(exc))
                continue
            return

    async def _watchdog(self, interval: float) -> None:
        """Alive while waiting: ping the watchdog (restarting would not bring NATS)."""
        while True:
            await anyio.sleep(interval)
            self.notifier.send("WATCHDOG=1", f"STATUS={self.status()}")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI: ``/healthz`` 200; ``/readyz`` 503 with the degraded state; the rest 503."""
        if scope["type"] != "http":
            return
        path = scope.get("path", "")
        if path == "/healthz":
            code, body, media = 200, b"ok\n", b"text/plain; charset=utf-8"
        elif path == "/readyz":
            body = msgspec.json.encode(self.health.state()) + b"\n"
            code, media = 503, b"application/json"
        else:
            code, media = 503, b"text/plain; charset=utf-8"
            body = f"{self.status()}\n".encode()
        headers = [(b"content-type", media), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
