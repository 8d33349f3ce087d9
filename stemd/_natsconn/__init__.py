"""The adapter around nats-py: the only code in stemd that talks to it.

Everything else in stemd goes through :class:`NatsConnection`, which

- connects with stemd's options: a bounded first connection (an unreachable URL is a
  clear :class:`~stemd._errors.TransportError` at start), then reconnection forever
  (:mod:`~stemd._natsconn.connect`);
- logs connection trouble through structlog instead of nats-py's default tracebacks;
- is one translation boundary (:mod:`~stemd._natsconn.boundary`): every entry point turns
  whatever nats-py, anyio or the socket raise into a
  :class:`~stemd._errors.TransportError` (a :class:`JetStreamApiError` carrying the
  server's error code, :class:`PermissionDenied`, :class:`NoResponders`), so nothing
  else escapes;
- never lets a nats-py callback do work: callbacks only forward messages and connection
  events into bounded anyio memory streams that stemd's own tasks read
  (:mod:`~stemd._natsconn.connection`);
- speaks the parts of the JetStream API stemd needs (publish with acks, stream and
  consumer management, direct gets, message deletion) with msgspec, on one long-lived
  decoder per reply type (:mod:`~stemd._natsconn.jetstream`).
"""

from __future__ import annotations

from stemd._natsconn.boundary import (
    JetStreamApiError,
    NoResponders,
    PermissionDenied,
    WrongLastSequence,
)
from stemd._natsconn.connect import open_connection
from stemd._natsconn.connection import Subscription
from stemd._natsconn.jetstream import NatsConnection
from stemd._natsconn.messages import (
    EXPECTED_LAST_SUBJECT_SEQ,
    EXPECTED_LAST_SUBJECT_SEQ_SUBJECT,
    MSG_ID,
    SCHEDULE,
    SCHEDULE_TARGET,
    ConnectionEvent,
    NatsMsg,
    PubAck,
    StoredMsg,
    split_url,
)

__all__ = [
    "EXPECTED_LAST_SUBJECT_SEQ",
    "EXPECTED_LAST_SUBJECT_SEQ_SUBJECT",
    "MSG_ID",
    "SCHEDULE",
    "SCHEDULE_TARGET",
    "ConnectionEvent",
    "JetStreamApiError",
    "NatsConnection",
    "NatsMsg",
    "NoResponders",
    "PermissionDenied",
    "PubAck",
    "StoredMsg",
    "Subscription",
    "WrongLastSequence",
    "open_connection",
    "split_url",
]
