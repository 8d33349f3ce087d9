"""Filtering runs by creation time, for the dashboard and ``stemd workflow list``: a time
is ISO 8601 (UTC when it has no offset) or an age before now (``15m``, ``2h``, ``1d``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stemd._model import RunState

__all__ = ["in_window", "parse_time"]


def parse_time(text: str | None) -> datetime | None:
    """A time filter: ISO 8601 (``2026-12-03T10:00``, UTC when no offset), or a duration
    before now (``15m``, ``2h``, ``1d``); ``None`` for nothing.

    Raises:
        ValueError: neither.
    """
    if not text:
        return None
    text = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time (2026-12-03T10:00) nor an age (15m)"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def in_window(state: RunState, after: datetime | None, before: datetime | None) -> bool:
    """Whether the run was created within ``[after, before)``."""
    at = state.created_at
    if at is None:
        return after is None and before is None
    return (after is None or at >= after) and (before is None or at < before)
