"""Brokers: how run ids reach workers."""

from __future__ import annotations

from stemd._broker.base import Broker, Delivery
from stemd._broker.local import LocalBroker
from stemd._errors import ConfigError
from stemd._natsauth import redact_url
from stemd._urls import url_kind

__all__ = ("Broker", "Delivery", "LocalBroker", "broker_from_url")


def broker_from_url(url: str | None, **options: object) -> Broker:
    """The broker named by ``url``: ``None`` for the in-process broker, or ``nats://HOST:PORT``
    (whose ``options`` may include ``auth``, a :class:`~stemd._natsauth.NatsAuth`)."""
    kind = url_kind(url) if isinstance(url, str) else None
    if url is None or kind == "local":
        return LocalBroker()
    if kind == "nats":
        try:
            from stemd._broker.jetstream import JetStreamBroker
        except ImportError as exc:
            raise ConfigError(f"broker: JetStream broker unavailable: {exc}") from exc
        return JetStreamBroker.from_url(url, **options)
    raise ConfigError(
        f"broker: unsupported URL {redact_url(str(url))!r} (leave it unset, or use nats://HOST:PORT)"
    )
