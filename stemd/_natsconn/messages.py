"""What the adapter hands out: messages detached from nats-py, read back from streams,
acknowledged by streams, and changes of the connection's state; the JetStream header
names stemd uses."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from stemd._errors import TransportError

__all__ = [
    "EXPECTED_LAST_SUBJECT_SEQ",
    "EXPECTED_LAST_SUBJECT_SEQ_SUBJECT",
    "MSG_ID",
    "SCHEDULE",
    "SCHEDULE_TARGET",
    "ConnectionEvent",
    "NatsMsg",
    "PubAck",
    "StoredMsg",
    "detach",
    "plain_headers",
    "split_url",
    "stored",
]

# Header names of the JetStream protocol.
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
# The subject that EXPECTED_LAST_SUBJECT_SEQ is checked on, when not the one published to
# (nats-server 2.11+): a write conditional on another key's revision.
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
SCHEDULE = "Nats-Schedule"
SCHEDULE_TARGET = "Nats-Schedule-Target"


class PubAck(msgspec.Struct, frozen=True):
    """The stream's acknowledgement of a publish."""

    stream: str
    seq: int
    duplicate: bool = False


class NatsMsg(msgspec.Struct, frozen=True):
    """A received message, detached from nats-py."""

    subject: str
    data: bytes
    reply: str = ""
    headers: dict[str, str] | None = None

    @property
    def status(self) -> str | None:
        """The status code of a control message (``"408"``, ``"204"``...), else ``None``."""
        if self.headers is None:
            return None
        return self.headers.get("Status")

    def header(self, name: str) -> str | None:
        """One header's value, or ``None``."""
        if self.headers is None:
            return None
        return self.headers.get(name)


class StoredMsg(msgspec.Struct, frozen=True):
    """A message read back from a stream by a direct get."""

    subject: str
    seq: int
    data: bytes
    time: str = ""
    headers: dict[str, str] | None = None


class ConnectionEvent(msgspec.Struct, frozen=True):
    """A change of the connection's state: ``disconnected``, ``reconnected`` or ``closed``."""

    kind: str


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """The server URL without its query string, and the query as a dict."""
    parts = urlsplit(url)
    query: dict[str, str] = {}
    for item in parts.query.split("&"):
        if item:
            key, _, value = item.partition("=")
            query[key] = value
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), query


def plain_headers(raw: Any) -> dict[str, str] | None:
    """Headers as a plain dict of strings, or ``None`` when there are none."""
    if not raw:
        return None
    return {str(k): str(v) for k, v in raw.items()}


def detach(msg: Any) -> NatsMsg:
    """A message of nats-py as a :class:`NatsMsg`."""
    return NatsMsg(
        subject=msg.subject,
        data=msg.data,
        reply=msg.reply or "",
        headers=plain_headers(msg.headers),
    )


def stored(msg: NatsMsg) -> StoredMsg | None:
    """The stream message a direct get answered with, or ``None`` when there is none."""
    status = msg.status
    if status is not None and not msg.data:
        if status == "404":
            return None
        raise TransportError(f"direct get: status {status} {msg.headers}")
    headers = msg.headers or {}
    try:
        return StoredMsg(
            subject=headers["Nats-Subject"],
            seq=int(headers["Nats-Sequence"]),
            data=msg.data,
            time=headers.get("Nats-Time-Stamp", ""),
            headers=headers,
        )
    except (KeyError, ValueError) as exc:
        raise TransportError(f"direct get: unexpected reply headers {headers}") from exc
