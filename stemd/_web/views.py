"""What the dashboard's pages show, computed from runs (no HTTP here): counts, the chart
of runs ended per minute, a run's waterfall, time filters."""

from __future__ import annotations

from collections import Counter, deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from stemd._engine.limits import WAITING_FOR_SLOT_CODE
from stemd._engine.observer import Observer
from stemd._model import RunStatus

if TYPE_CHECKING:
    from stemd._engine.observer import RunChanged
    from stemd._model import RunState

__all__ = ["Bar", "EndedPerMinute", "counts", "held_back", "raw_json", "waterfall"]

_MINUTES = 60


class EndedPerMinute(Observer):
    """Runs completed and failed (or cancelled) per minute over the last hour, as this
    daemon saw them end."""

    def __init__(self) -> None:
        self._minutes: deque[tuple[int, int, int]] = deque(maxlen=_MINUTES)

    def _bump(self, failed: bool) -> None:
        minute = int(datetime.now(UTC).timestamp() // 60)
        if self._minutes and self._minutes[-1][0] == minute:
            m, ok, bad = self._minutes[-1]
            self._minutes[-1] = (m, ok + (not failed), bad + failed)
        else:
            self._minutes.append((minute, int(not failed), int(failed)))

    def run_changed(self, event: RunChanged) -> None:
        if event.status is RunStatus.COMPLETED:
            self._bump(False)
        elif event.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            self._bump(True)

    def series(self) -> list[tuple[str, int, int]]:
        """``(HH:MM, completed, failed)`` for each of the last 60 minutes, oldest first."""
        now = int(datetime.now(UTC).timestamp() // 60)
        seen = {m: (ok, bad) for m, ok, bad in self._minutes}
        out = []
        for m in range(now - _MINUTES + 1, now + 1):
            ok, bad = seen.get(m, (0, 0))
            out.append((datetime.fromtimestamp(m * 60, UTC).strftime("%H:%M"), ok, bad))
        return out


def counts(runs: list[RunState]) -> tuple[dict[str, int], list[tuple[str, dict[str, int]]]]:
    """Runs by status, and by workflow then status (busiest workflow first)."""
    by_status = Counter(r.status.value for r in runs)
    by_workflow: dict[str, Counter[str]] = {}
    for r in runs:
        by_workflow.setdefault(r.workflow, Counter())[r.status.value] += 1
    ordered = sorted(by_workflow.items(), key=lambda kv: -sum(kv[1].values()))
    return dict(by_status), [(w, dict(c)) for w, c in ordered]


class Bar(msgspec.Struct, frozen=True, kw_only=True):
    """One row of a run's waterfall: where its bar starts and how wide it is, in percent
    of the run's span."""

    name: str
    kind: str
    step: str
    at: datetime | None
    duration: float | None
    detail: str | None
    left: float
    width: float
    child: str | None = None


def waterfall(state: RunState) -> tuple[list[Bar], float]:
    """The run's timeline as bars over its span, and the span in seconds."""
    start = state.created_at
    end = state.finished_at or state.updated_at or start
    items = state.timeline
    if start is None or end is None:
        return [], 0.0
    ats = [c.at for c in items if c.at is not None]
    last = max([end, *ats])
    span = max((last - start).total_seconds(), 1e-6)
    bars = []
    for c in items:
        if c.at is None:
            left, width = 0.0, 0.0
        else:
            duration = c.duration or 0.0
            begin = (c.at - start).total_seconds() - duration
            left = max(0.0, min(100.0, begin / span * 100))
            width = max(0.5, min(100.0 - left, duration / span * 100))
        bars.append(
            Bar(
                name=c.name,
                kind=c.kind,
                step=c.step,
                at=c.at,
                duration=c.duration,
                detail=c.detail,
                left=round(left, 2),
                width=round(width, 2),
                child=c.detail if c.kind == "child_start" else None,
            )
        )
    return bars, span


def raw_json(value: Any) -> str:
    """``value`` as indented JSON, as the wire encodes it."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def held_back(state: RunState) -> str | None:
    """Why flow control holds the run back (a concurrency limit's slot), or ``None``."""
    error = state.error
    if error is None or error.code != WAITING_FOR_SLOT_CODE:
        return None
    if state.status is RunStatus.SUSPENDED:
        return error.message
    return None
