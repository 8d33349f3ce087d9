"""Sessions: how a process that executes runs says that it is alive.

A process with workers (an embedded App, a daemon) holds one session: a record it renews
every ``lease/4`` seconds, whatever the number of runs it executes. The runs it claims
carry its session id as their ``lease_owner``. A peer that sees a session stop changing
for ``lease`` seconds of its own monotonic clock, or (on the same host) sees its lock
file free, ends it: every run the session still held is given back at once (runnable,
with a new fencing token, so that a late write of the dead owner is refused) and handed to
the workers. See :mod:`stemd._actors.sessions`.

Stores implement :class:`SessionStore`; the transition of a run given back is
:func:`apply_takeover`, shared by every store.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

import msgspec

from stemd._model import RunStatus
from stemd._store.base import RunRecord, compute_timer_at

__all__ = ["Released", "SessionRecord", "SessionStore", "apply_takeover", "held_by"]


class SessionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One live (or dead, not yet noticed) process executing runs.

    Attributes:
        session_id: the ``lease_owner`` of the runs it claims.
        host: the host name of the process.
        pid: its process id.
        lock: the lock file the process holds while it lives (absolute path), or ``None``.
        lock_id: ``"<st_dev>:<st_ino>"`` of that file, so that a peer on the same host
            tests the very file (not one of the same name in another mount namespace).
        started_at: when the session began (the owner's clock).
        renewed_at: when it was last renewed (the owner's clock): peers compare it with
            their own to measure clock skew.
        beat: renewals so far; a peer declares the session dead when it stops moving.
        lease: the owner's ``lease`` setting, in seconds.
    """

    session_id: str
    host: str
    pid: int
    lock: str | None = None
    lock_id: str | None = None
    started_at: datetime
    renewed_at: datetime
    beat: int = 0
    lease: float


class Released(msgspec.Struct, frozen=True, kw_only=True):
    """A run given back by an ended session: enqueue it under ``queue`` with ``token``."""

    run_id: str
    queue: str
    token: int


@runtime_checkable
class SessionStore(Protocol):
    """The session records of a store (memory, SQLite and JetStream KV implement it)."""

    async def put_session(self, session: SessionRecord) -> None:
        """Create or replace ``session``'s record."""
        ...

    async def renew_session(self, session: SessionRecord) -> bool:
        """Replace the record of a session that still has one; ``False`` (and nothing
        written) when it has been ended, by a peer that took it for dead."""
        ...

    async def sessions(self) -> list[SessionRecord]:
        """Every session record."""
        ...

    async def end_session(self, session_id: str, now: datetime) -> list[Released]:
        """Give back every run the session still holds (:func:`apply_takeover`) and delete
        its record; return the runs given back. Ending an ended session gives back the
        runs claimed under its id since, if any."""
        ...


def held_by(rec: RunRecord, session_id: str) -> bool:
    """Whether ``rec`` is a live run claimed under ``session_id``."""
    return rec.status is RunStatus.RUNNING and rec.lease_owner == session_id


def apply_takeover(rec: RunRecord, now: datetime) -> RunRecord:
    """The run of an ended session: PENDING (runnable at once), no lease, a new token
    (the old owner's writes are refused from now on)."""
    new = msgspec.structs.replace(
        rec,
        status=RunStatus.PENDING,
        lease_owner=None,
        lease_expires_at=None,
        token=rec.token + 1,
        updated_at=now,
    )
    new.timer_at = compute_timer_at(new)
    return new
