"""The test helper that runs nats-server: a port it chose that another process took
before the server bound it is chosen again (parallel test workers race for free ports)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import pytest

from stemd._natsconn import open_connection
from stemd.testing._nats import NatsServer

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


async def test_a_port_taken_before_the_start_is_chosen_again(tmp_path: Path) -> None:
    """Both ports taken between their choice and the start: the server starts on others."""
    server = NatsServer(str(tmp_path))
    taken = []
    for port in (server.port, server.monitor_port):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        taken.append(sock)
    try:
        await server.start()
        try:
            assert server.port != taken[0].getsockname()[1]
            assert server.monitor_port != taken[1].getsockname()[1]
            conn = await open_connection(server.url, name="t")
            await conn.close()
        finally:
            server.terminate()
    finally:
        for sock in taken:
            sock.close()
