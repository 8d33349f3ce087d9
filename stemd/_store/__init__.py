"""Stores: where runs and checkpoints live."""

from __future__ import annotations

from stemd._errors import ConfigError
from stemd._store.base import Store
from stemd._store.memory import MemoryStore
from stemd._urls import store_kind

__all__ = ("MemoryStore", "Store", "store_from_url")


def store_from_url(url: str, **options: object) -> Store:
    """The store named by ``url``: ``memory://``, ``sqlite:///PATH`` or ``nats://HOST:PORT``.

    ``options`` go to the store's ``from_url`` (a NATS store takes ``auth``, a
    :class:`~stemd._natsauth.NatsAuth`)."""
    if not isinstance(url, str):
        raise ConfigError(f"store: expected a URL string, got {type(url).__name__}")
    kind = store_kind(url)
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        try:
            from stemd._store.sqlite import SqliteStore
        except ImportError as exc:  # pragma: no cover - the module ships with stemd
            raise ConfigError(f"store: SQLite store unavailable: {exc}") from exc
        return SqliteStore.from_url(url, **options)
    try:
        from stemd._store.jetstream import JetStreamStore
    except ImportError as exc:
        raise ConfigError(f"store: JetStream KV store unavailable: {exc}") from exc
    return JetStreamStore.from_url(url, **options)
