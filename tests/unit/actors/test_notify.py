"""The systemd notify protocol: datagrams to NOTIFY_SOCKET, and the actor that sends them."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import anyio
import pytest

from stemd._actors.notify import Notifier, SystemdNotify

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a path, as systemd's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_send_to_a_path(listener: tuple[socket.socket, str]) -> None:
    """Fields are sent newline-separated in one datagram."""
    sock, path = listener
    notifier = Notifier(path)
    assert notifier.send("READY=1", "STATUS=up")
    assert sock.recv(1024) == b"READY=1\nSTATUS=up"
    notifier.close()


def test_send_to_an_abstract_socket() -> None:
    """An address starting with '@' is an abstract socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"stemd-unit-{os.getpid()}"
    sock.bind("\0" + name)
    sock.settimeout(5)
    notifier = Notifier("@" + name)
    try:
        assert notifier.send("WATCHDOG=1")
        assert sock.recv(1024) == b"WATCHDOG=1"
    finally:
        notifier.close()
        sock.close()


def test_without_a_socket_nothing_is_sent() -> None:
    """With no NOTIFY_SOCKET every send is a no-op."""
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.send("READY=1")


def test_a_dead_socket_does_not_raise(tmp_path: Path) -> None:
    """A notify socket nobody listens on is logged, never raised."""
    notifier = Notifier(str(tmp_path / "gone"))
    assert not notifier.send("READY=1")
    notifier.close()


def test_watchdog_interval_is_half_the_timeout_for_this_pid_only() -> None:
    """WATCHDOG_USEC/2, and no watchdog when WATCHDOG_PID names another process."""
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000"}
    assert Notifier.from_environ(env).watchdog_interval == 1.5
    env["WATCHDOG_PID"] = str(os.getpid())
    assert Notifier.from_environ(env).watchdog_interval == 1.5
    env["WATCHDOG_PID"] = "1"
    assert Notifier.from_environ(env).watchdog_interval is None


@pytest.mark.anyio
async def test_actor_says_ready_pings_while_healthy_and_stopping_on_cancel(
    listener: tuple[socket.socket, str],
) -> None:
    """READY=1 at start, WATCHDOG=1 only while healthy, STOPPING=1 when cancelled."""
    sock, path = listener
    sock.setblocking(False)
    healthy = [True]

    async def check() -> tuple[bool, str]:
        return healthy[0], "ok" if healthy[0] else "store down"

    notifier = Notifier(path, watchdog_usec=20_000)
    actor = SystemdNotify(notifier, healthy=check, status=lambda: "fine")
    received: list[bytes] = []

    async def next_message() -> bytes:
        while True:
            await anyio.wait_readable(sock)
            data = sock.recv(1024)
            received.append(data)
            return data

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            assert (await next_message()).startswith(b"READY=1\nSTATUS=fine\nMAINPID=")
            assert await next_message() == b"WATCHDOG=1\nSTATUS=fine"
            healthy[0] = False
            while await next_message() != b"STATUS=unhealthy: store down":
                pass
            tg.cancel_scope.cancel()
    assert sock.recv(1024) == b"STOPPING=1\nSTATUS=stopping"
    assert actor.statistics().unhealthy >= 1
    notifier.close()
