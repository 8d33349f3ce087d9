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

A factory may ``pytest.skip`` when its backend is unavailable (no ``nats-server``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from stemd.store import store_from_url
from stemd.store.base import Store

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


STORE_FACTORIES: dict[str, StoreFactory] = {
    "memory": memory_store,
}
