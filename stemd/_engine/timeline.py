"""A run's timeline: its checkpoints in order, with when each was recorded, how long the
run took to get there, and what each wait was, for people inspecting the run.

Internal checkpoints (``<step>@<kind>#<n>``) are the run's waits: a sleep's wake time,
an event's payload or timeout marker, a child's run id, a child's end. Their values are
the engine's own envelopes; here they become a few words (:attr:`CheckpointInfo.detail`).
A flow step's suspension count (``<step>@entry#<n>``, what ``FlowContext.iteration`` is
read from) repeats the wait it follows and is left out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stemd._errors import PayloadError
from stemd._model import CheckpointInfo, RunStatus
from stemd._store.base import Checkpoint, base_step_name

if TYPE_CHECKING:
    from collections.abc import Iterable

    from stemd._codec import Codec

__all__ = ["build_timeline"]

# Internal checkpoint kind (the part after '@') → timeline kind.
_KINDS = {
    "sleep": "sleep",
    "event": "event",
    "any": "event",
    "child": "child_start",
    "join": "child_join",
}


def _rfc3339(at: datetime) -> str:
    """``at`` in UTC as RFC 3339 (``2026-11-21T09:20:12.104Z``), as the wire writes times."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _detail(kind: str, value: bytes, codec: Codec) -> str | None:
    """A few words on a wait from its stored value; ``None`` if the value is not the
    envelope expected (it never makes a run unreadable)."""
    try:
        if kind == "sleep":
            return "until " + _rfc3339(codec.decode(value, type=datetime))
        if kind == "event":
            envelope: Any = codec.decode(value)
            if not isinstance(envelope, dict):
                return None
            if "t" in envelope:
                return "timed out"
            topic = envelope.get("k")
            return f"received on {topic}" if isinstance(topic, str) else "received"
        if kind == "child_start":
            child: str = codec.decode(value, type=str)
            return child
        if kind == "failed":
            failed: Any = codec.decode(value)
            return f"{failed['type']}: {failed['message']}"
        if kind == "child_join":
            joined: Any = codec.decode(value)
            status = str(joined["s"])
            message = joined.get("m")
            if status != RunStatus.COMPLETED.value and message:
                return f"{status}: {message}"
            return status
    except (PayloadError, KeyError, TypeError, AttributeError, ValueError):
        return None
    return None


def build_timeline(
    created_at: datetime | None, checkpoints: Iterable[Checkpoint], codec: Codec
) -> list[CheckpointInfo]:
    """The timeline of a run created at ``created_at`` with ``checkpoints`` (in write
    order). Each entry's duration runs from the entry before it (the first: from
    ``created_at``)."""
    out: list[CheckpointInfo] = []
    previous = created_at
    for cp in checkpoints:
        step, at_sign, rest = cp.name.partition("@")
        if at_sign:
            raw_kind = rest.partition("#")[0]
            if raw_kind == "entry":
                continue
            kind = _KINDS.get(raw_kind, raw_kind)
            detail = _detail(kind, cp.value, codec)
        else:
            step, kind, detail = base_step_name(cp.name), "step", None
        duration = None
        if cp.at is not None and previous is not None:
            duration = (cp.at - previous).total_seconds()
        out.append(
            CheckpointInfo(
                name=cp.name, kind=kind, step=step, at=cp.at, duration=duration, detail=detail
            )
        )
        previous = cp.at
    return out
