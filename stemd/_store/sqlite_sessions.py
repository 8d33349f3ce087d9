"""The SQLite store's sessions (:mod:`stemd._store.sessions`): the writer's operations.

A session is a row of ``sessions`` (migration 0006); ending one gives back, in the same
transaction, the runs still RUNNING under it (found through the status index).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from stemd._store.sessions import Released, SessionRecord, apply_takeover
from stemd._store.sqlite_rows import row_of, update
from stemd._store.sqlite_schema import record_from_row

if TYPE_CHECKING:
    import sqlite3
    from datetime import datetime

__all__ = ["SELECT_SESSIONS", "end_session", "put_session", "renew_session", "session_from_row"]

SELECT_SESSIONS = "SELECT record FROM sessions"
_HELD = "SELECT run_id FROM runs WHERE status = 'running' AND lease_owner = ?"
_decoder = msgspec.json.Decoder(SessionRecord)


def session_from_row(row: tuple[bytes]) -> SessionRecord:
    """The record of a row selected by :data:`SELECT_SESSIONS`."""
    return _decoder.decode(row[0])


def put_session(db: sqlite3.Connection, session: SessionRecord) -> None:
    db.execute(
        "INSERT INTO sessions (session_id, record) VALUES (?, ?)"
        " ON CONFLICT (session_id) DO UPDATE SET record = excluded.record",
        (session.session_id, msgspec.json.encode(session)),
    )


def renew_session(db: sqlite3.Connection, session: SessionRecord) -> bool:
    cur = db.execute(
        "UPDATE sessions SET record = ? WHERE session_id = ?",
        (msgspec.json.encode(session), session.session_id),
    )
    return cur.rowcount == 1


def end_session(db: sqlite3.Connection, session_id: str, now: datetime) -> list[Released]:
    out = []
    for (run_id,) in db.execute(_HELD, (session_id,)).fetchall():
        row = row_of(db, run_id)
        if row is None:
            continue
        new = apply_takeover(record_from_row(row), now)
        update(db, row, new)
        out.append(Released(run_id=run_id, queue=new.queue, token=new.token))
    db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
    return out
