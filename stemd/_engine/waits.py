"""Waits on events and messages inside an execution (when a wait times out, what it says
about itself, which topics it waits on, what it took), and the checks of an emit and a
send."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from stemd._codec import check_depth
from stemd._errors import EventTimeout, StemError
from stemd._identifiers import validate_run_id, validate_topic
from stemd._model import seconds
from stemd._store.base import Suspend, topics_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from stemd._codec import Codec
    from stemd._engine.replay import Replay
    from stemd._store.base import RunRecord

__all__ = ["any_topics", "message", "retention", "suspend_on", "taken", "timed_out"]


def _deadline(
    now: datetime, timeout: float | None, deadline: datetime | None, what: str
) -> datetime | None:
    """The instant a wait times out: the earlier of ``timeout`` seconds from ``now`` and
    ``deadline`` (an aware datetime); ``None`` when neither is given."""
    at = None if timeout is None else now + timedelta(seconds=timeout)
    if deadline is not None:
        if not isinstance(deadline, datetime) or deadline.tzinfo is None:
            raise StemError(f"{what}: deadline must be an aware datetime")
        at = deadline if at is None else min(at, deadline)
    return at


def suspend_on(
    codec: Codec,
    now: datetime,
    topics: tuple[str, ...],
    key: str,
    until: tuple[float | None, datetime | None],
    data: Any,
    what: str,
) -> Suspend:
    """The suspension of a wait (``what``) on ``topics`` whose payload goes to checkpoint
    ``key``, timing out as ``until`` (timeout seconds from ``now``, deadline) says, with
    ``data`` about it."""
    at = _deadline(now, until[0], until[1], what)
    encoded = None
    if data is not None:
        check_depth(data, f"{what} data")
        encoded = codec.encode(data)
    return Suspend(
        wait_topic=topics[0],
        wait_topics=topics if len(topics) > 1 else None,
        wait_key=key,
        resume_at=at,
        wait_data=encoded,
    )


def any_topics(topics: Sequence[str]) -> tuple[str, ...]:
    """The topics of a ``wait_for_any``, checked, each once, in the order given."""
    if isinstance(topics, str) or not isinstance(topics, Sequence) or not topics:
        raise StemError("wait_for_any needs a non-empty list of topics")
    for topic in topics:
        validate_topic(topic)
    return tuple(dict.fromkeys(topics))


def taken(
    codec: Codec, raw: bytes, wanted: tuple[str, ...], replay: Replay, requested: str
) -> dict[str, Any]:
    """What a wait on ``wanted`` (``requested``, for people) recorded when it ended: the
    envelope of the event or message it took.

    Raises:
        EventTimeout: the wait timed out.
        Interrupt: it timed out waiting on other topics (the code changed since): the
            run stops with a ``WorkflowChanged`` error.
    """
    envelope: dict[str, Any] = codec.decode(raw)
    if "t" in envelope:
        waited = envelope.get("w")  # absent from timeouts recorded by older stemd
        if isinstance(waited, list) and set(waited) != set(wanted):
            raise replay.stop(f"a wait on {waited!r} that timed out", requested)
        raise EventTimeout(", ".join(wanted))
    return envelope


def timed_out(codec: Codec) -> Callable[[RunRecord], bytes]:
    """What a wait of a run records when it times out: the topics it waited on, so that
    a replay by code that waits on others stops (see :func:`taken`)."""
    plain = codec.encode({"t": True})

    def value(rec: RunRecord) -> bytes:
        topics = topics_of(rec)
        return codec.encode({"t": True, "w": list(topics)}) if topics else plain

    return value


def retention(default: float, retain: bool | float | timedelta | None) -> float | None:
    """Seconds an event emitted with ``retain`` is kept (``None``: not kept).

    ``None`` or ``True``: ``default`` (the engine's ``event_retention``); ``False`` or 0:
    not kept (only the runs waiting at that moment get it); seconds or a timedelta: that
    long."""
    if retain is None or retain is True:
        secs: float | None = default
    elif retain is False:
        secs = 0.0
    else:
        secs = seconds(retain, "retain")
    return secs if secs else None


def message(run_id: str, topic: str, payload: Any, key: str | None) -> dict[str, Any]:
    """The envelope of a message to ``run_id`` on ``topic``, its arguments checked."""
    validate_run_id(run_id)
    validate_topic(topic)
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 256):
        raise StemError(f"invalid message key {key!r}: use a string of 1-256 characters")
    check_depth(payload, "message payload")
    return {"e": payload, "k": topic}
