"""The systemd notify protocol, with no dependency: datagrams to ``$NOTIFY_SOCKET``.

:class:`Notifier` sends the messages; :class:`SystemdNotify` is the actor that tells
systemd ``READY=1`` once every actor before it has started, pings ``WATCHDOG=1`` every
``WATCHDOG_USEC / 2`` while the daemon is healthy, keeps ``STATUS=`` current, and says
``STOPPING=1`` when it is cancelled (shutdown) if the daemon did not say it first.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import anyio
import msgspec
import structlog

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from anyio.abc import TaskStatus

__all__ = ["Notifier", "NotifyStats", "SystemdNotify"]

log = structlog.get_logger("stemd.systemd")


class Notifier:
    """Sends ``sd_notify`` messages to ``address`` (a path, or ``@name`` for an abstract
    socket). With no address every call is a no-op, so callers need not check.

    Args:
        address: the value of ``$NOTIFY_SOCKET``, or ``None``.
        watchdog_usec: the value of ``$WATCHDOG_USEC`` (microseconds), or ``None``.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self.stopping = False
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for through ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
        ``WATCHDOG_PID`` (the watchdog is for this process only when the pid matches)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if raw.isdigit() and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        return cls(env.get("NOTIFY_SOCKET"), usec)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1`` pings (half the watchdog timeout), if any."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def _target(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            # An abstract socket: its name starts with a NUL byte instead of the '@'.
            return b"\0" + self.address[1:].encode()
        return self.address

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) in one datagram; ``True`` if sent.

        Never raises: a notify failure must not take the daemon down.
        """
        if self.address is None or not fields:
            return False
        if "STOPPING=1" in fields:
            self.stopping = True
        message = "\n".join(fields).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self._target())
            return True
        except OSError as exc:
            log.warning("systemd notify failed", address=self.address, error=str(exc))
            return False

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class NotifyStats(msgspec.Struct, frozen=True, kw_only=True):
    """What the notify actor sent."""

    ready: bool
    watchdog_pings: int
    unhealthy: int


class SystemdNotify:
    """The actor speaking to systemd. Put it last among the supervisor's actors: the
    supervisor starts actors one after the other, so when this one runs, all the others
    have reported ready.

    Args:
        notifier: where to send.
        healthy: returns ``(ok, why)``; ``WATCHDOG=1`` is sent only while ``ok``.
        status: the text of ``STATUS=``.
        status_interval: seconds between two status updates when there is no watchdog.
    """

    name = "systemd"

    def __init__(
        self,
        notifier: Notifier,
        *,
        healthy: Callable[[], Awaitable[tuple[bool, str]]],
        status: Callable[[], str],
        status_interval: float = 10.0,
    ) -> None:
        self.notifier = notifier
        self._healthy = healthy
        self._status = status
        self._status_interval = status_interval
        self._ready = False
        self._pings = 0
        self._unhealthy = 0

    def statistics(self) -> NotifyStats:
        return NotifyStats(ready=self._ready, watchdog_pings=self._pings, unhealthy=self._unhealthy)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if not self._ready:
            self._ready = True
            self.notifier.send("READY=1", f"STATUS={self._status()}", f"MAINPID={os.getpid()}")
            log.info("ready", status=self._status())
        task_status.started()
        if not self.notifier.enabled:
            await anyio.sleep_forever()
        watchdog = self.notifier.watchdog_interval
        interval = watchdog if watchdog is not None else self._status_interval
        try:
            while True:
                await self._tick(watchdog is not None, interval)
                await anyio.sleep(interval)
        except anyio.get_cancelled_exc_class():
            if not self.notifier.stopping:
                self.notifier.send("STOPPING=1", "STATUS=stopping")
            raise

    async def _tick(self, watchdog: bool, interval: float) -> None:
        ok, why = False, "health check timed out"
        with anyio.move_on_after(max(interval, 0.05)):
            ok, why = await self._healthy()
        if ok:
            fields = ["WATCHDOG=1"] if watchdog else []
            self.notifier.send(*fields, f"STATUS={self._status()}")
            self._pings += watchdog
        else:
            # No ping: if this lasts, systemd's watchdog kills and restarts the daemon.
            self._unhealthy += 1
            log.warning("unhealthy; not pinging the watchdog", reason=why)
            self.notifier.send(f"STATUS=unhealthy: {why}")
