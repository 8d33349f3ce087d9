"""Whether the App can do its work now: ``ready``, or ``degraded`` because a dependency
(the store, NATS, the disk under SQLite) is away.

A dependency going away is not a bug: the actor that met it reports it here (through the
supervisor, which restarts it with backoff and without spending its restart budget), the
workers stop taking deliveries, and the report is cleared when that actor runs again.
Every change of state is logged once (``degraded`` / ``recovered``), not once per attempt,
and told to whoever subscribed (the systemd notify actor, the metrics).

:class:`Health` is what ``/readyz`` serves (``HealthState``), ``STATUS=`` says, and the
``stemd_degraded`` metric counts.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import anyio
import msgspec
import structlog

from stemd._errors import PermissionDenied, StemError, StoreError, TransportError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["DEPENDENCIES", "Health", "HealthState", "outage_of", "outcome_unknown"]

log = structlog.get_logger("stemd.health")

#: The dependencies an outage is reported against.
DEPENDENCIES = ("store", "nats")

# SQLite's primary result codes of a database that is there but cannot be used now: busy,
# locked, read-only (a remount), I/O error, full, cannot open, lock protocol.
_SQLITE_AWAY = {5, 6, 8, 10, 13, 14, 15}


class HealthState(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of :class:`Health` (what ``/readyz`` answers in JSON).

    Attributes:
        state: ``ready`` or ``degraded``.
        degraded: the dependencies away now, each with the last reason seen.
        since: Unix time at which the current state began.
        changes: how many times the state changed since start.
    """

    state: Literal["ready", "degraded"]
    degraded: dict[str, str]
    since: float
    changes: int

    @property
    def ready(self) -> bool:
        """Whether nothing is degraded."""
        return self.state == "ready"

    def describe(self) -> str:
        """One line: ``ready``, or ``degraded (store: <reason>; nats: <reason>)``."""
        if self.ready:
            return "ready"
        away = "; ".join(f"{d}: {r}" for d, r in sorted(self.degraded.items()))
        return f"degraded ({away})"


def _sqlite_away(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _SQLITE_AWAY
    text = str(exc).lower()
    return any(w in text for w in ("disk", "locked", "busy", "readonly", "unable to open"))


def outage_of(exc: BaseException) -> str | None:
    """The dependency ``exc`` says is away (``"store"`` or ``"nats"``), or ``None`` when it
    is something else (a bug, a refusal, a configuration error).

    NATS unreachable or timing out (:class:`TransportError`, except a permission the server
    refuses), a store that cannot be written or read now (SQLite full, locked, read-only,
    I/O error; a file system error) are outages."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, PermissionDenied):
            return None
        if isinstance(current, TransportError):
            return "nats"
        if isinstance(current, sqlite3.Error):
            return "store" if _sqlite_away(current) else None
        if isinstance(current, OSError):  # TimeoutError included
            return "store"
        if isinstance(current, StemError) and current.non_retryable:
            return None
        if isinstance(current, StoreError) and _sqlite_away(current):
            return "store"
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def outcome_unknown(run_id: str) -> Iterator[None]:
    """A start that failed because the store or NATS went away may have been written (a
    write whose answer was lost): the error raised says so, and names the run id to start
    it again with, so that the retry cannot make a second run."""
    try:
        yield
    except (StoreError, TransportError) as exc:
        if outage_of(exc) is None:
            raise
        cls = TransportError if isinstance(exc, TransportError) else StoreError
        raise cls(
            f"{exc}; run {run_id} may have been created: start it again with "
            f"run_id={run_id!r} (that cannot make a second run)"
        ) from exc


class Health:
    """The App's readiness: which dependencies are away, reported by whom.

    Each report names a *source* (an actor, a probe) and the dependency it found away; the
    dependency is degraded while at least one source reports it. A source clears its own
    report when it works again.
    """

    def __init__(self) -> None:
        self._reports: dict[str, tuple[str, str]] = {}  # source -> (dependency, reason)
        self._away_since: dict[str, float] = {}  # dependency -> when it went away
        self._since = time.time()
        self._changes = 0
        self._changed: anyio.Event | None = None
        self._listeners: list[Callable[[HealthState], object]] = []

    @property
    def ready(self) -> bool:
        """Whether no dependency is away."""
        return not self._reports

    def state(self) -> HealthState:
        """The current state."""
        degraded: dict[str, str] = {}
        for dependency, reason in self._reports.values():
            degraded.setdefault(dependency, reason)
        return HealthState(
            state="degraded" if degraded else "ready",
            degraded=degraded,
            since=self._since,
            changes=self._changes,
        )

    def subscribe(self, listener: Callable[[HealthState], object]) -> Callable[[], None]:
        """Call ``listener(state)`` on every change; return the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def report(self, source: str, dependency: str, reason: str | BaseException) -> None:
        """``source`` found ``dependency`` away (an outage, not a bug)."""
        if isinstance(reason, BaseException):
            reason = _reason(reason)
        previous = self._reports.get(source)
        if previous is not None and previous[0] != dependency:
            self.clear(source)  # that source now meets another dependency
        before = self.state()
        self._reports[source] = (dependency, reason)
        if dependency not in before.degraded:
            self._away_since[dependency] = time.time()
            log.warning("degraded", dependency=dependency, reason=reason, source=source)
            self._change()

    def clear(self, source: str) -> None:
        """``source`` works again: withdraw its report."""
        found = self._reports.pop(source, None)
        if found is None:
            return
        dependency = found[0]
        if not any(dep == dependency for dep, _ in self._reports.values()):
            since = self._away_since.pop(dependency, self._since)
            after = round(time.time() - since, 1)
            log.info("recovered", dependency=dependency, source=source, after=after)
            self._change()

    async def wait_ready(self) -> None:
        """Return once nothing is degraded."""
        while self._reports:
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _change(self) -> None:
        self._since = time.time()
        self._changes += 1
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        state = self.state()
        for listener in list(self._listeners):
            listener(state)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
