"""The SQLite store's operations on events and messages, run by the writer inside a
transaction: a topic's kept events (table ``events``), their delivery to the waiting runs,
the runs' mailboxes (table ``messages``), and what a run that suspends on events takes at
once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from stemd._store.base import Delivery, Event, SendResult, cursor_of, topics_of
from stemd._store.sqlite_rows import put_checkpoint, row_of, update
from stemd._store.sqlite_schema import RUN_COLUMNS, record_from_row, to_us
from stemd._store.transitions import apply_delivery, apply_hold, choose_event, waits_on

if TYPE_CHECKING:
    import sqlite3

    from stemd._store.base import RunRecord

__all__ = [
    "WAITING_MANY",
    "WAITING_ONE",
    "append_event",
    "deliver_event",
    "emit_event",
    "merge_waiting",
    "prune_events",
    "satisfy",
    "send_message",
]

_COLS = ", ".join(RUN_COLUMNS)
# Runs waiting on a topic past a position, in creation order (seq, then the columns):
# waits on one topic by runs_by_topic, waits on several by run_waits (a wait on several
# topics has the first in wait_topic: each run is found once). See waiting_rows.
WAITING_ONE = (
    f"SELECT seq, {_COLS} FROM runs"
    " WHERE wait_topic = ?1 AND status = 'suspended' AND wait_topic IS NOT NULL AND seq > ?2"
    " ORDER BY seq LIMIT ?3"
)
WAITING_MANY = (
    "SELECT w.seq, " + ", ".join(f"r.{c}" for c in RUN_COLUMNS) + " FROM run_waits w"
    " JOIN runs r ON r.seq = w.seq"
    " WHERE w.topic = ?1 AND w.seq > ?2 AND r.status = 'suspended' AND r.wait_topic != ?1"
    " ORDER BY w.seq LIMIT ?3"
)
_LAST_EVENT = "SELECT max(seq) FROM events WHERE topic = ?"
_INSERT_EVENT = "INSERT INTO events (topic, value, at, expires_at) VALUES (?, ?, ?, ?)"
_NEXT_KEPT = (
    "SELECT seq, value FROM events WHERE topic = ? AND seq > ? AND expires_at > ?"
    " ORDER BY seq LIMIT 1"
)
_NEXT_MESSAGE = (
    "SELECT seq, topic, value, key FROM messages"
    " WHERE run_id = ? AND value IS NOT NULL AND topic IN ({}) ORDER BY seq LIMIT 1"
)
_INSERT_MESSAGE = "INSERT INTO messages (run_id, topic, value, key, sent_at) VALUES (?, ?, ?, ?, ?)"


def _next_kept(
    db: sqlite3.Connection, topic: str, after: int, now: datetime
) -> tuple[int, bytes] | None:
    row = db.execute(_NEXT_KEPT, (topic, after, to_us(now))).fetchone()
    return None if row is None else (row[0], row[1])


def _take(
    db: sqlite3.Connection,
    rec: RunRecord,
    topic: str,
    seq: int | None,
    value: bytes,
    now: datetime,
) -> RunRecord:
    if rec.wait_key is not None:
        put_checkpoint(db, rec.run_id, rec.wait_key, value, now)
    return apply_delivery(rec, now, topic, seq)


def satisfy(db: sqlite3.Connection, rec: RunRecord, now: datetime) -> RunRecord:
    """A run that just suspended on events takes what is already there for it: the
    oldest message of its mailbox on one of its topics, else the oldest kept event it
    has not taken."""
    topics = topics_of(rec)
    sql = _NEXT_MESSAGE.format(", ".join("?" * len(topics)))
    message = db.execute(sql, (rec.run_id, *topics)).fetchone()
    if message is not None:
        seq, topic, value, key = message
        if key is None:
            db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
        else:
            db.execute("UPDATE messages SET value = NULL WHERE seq = ?", (seq,))
        return _take(db, rec, topic, None, value, now)
    best: tuple[int, bytes, str] | None = None
    for topic in topics:
        found = _next_kept(db, topic, cursor_of(rec, topic), now)
        if found is not None and (best is None or found[0] < best[0]):
            best = (found[0], found[1], topic)
    if best is None:
        return rec
    return _take(db, rec, best[2], best[0], best[1], now)


def append_event(
    db: sqlite3.Connection, topic: str, value: bytes, now: datetime, retain: float | None
) -> Event:
    (prev,) = db.execute(_LAST_EVENT, (topic,)).fetchone()
    expires = None if retain is None else now + timedelta(seconds=retain)
    cursor = db.execute(
        _INSERT_EVENT, (topic, value, to_us(now), to_us(expires if expires else now))
    )
    seq = cursor.lastrowid
    assert seq is not None
    if expires is None:
        # Not kept: it only takes its position in the event order (never reused).
        db.execute("DELETE FROM events WHERE seq = ?", (seq,))
    return Event(topic=topic, seq=seq, value=value, at=now, prev=prev or 0, expires_at=expires)


def deliver_event(
    db: sqlite3.Connection, event: Event, now: datetime, after: int, limit: int
) -> Delivery:
    topic = event.topic
    rows = _waiting(db, topic, after, limit)
    resumed = []
    for _, *row in rows:
        rec = record_from_row(row)
        cursor = cursor_of(rec, topic)
        # No kept event of the topic lies between the run's cursor and the event when the
        # cursor is at or past the one before it: skip looking.
        found = _next_kept(db, topic, cursor, now) if cursor < event.prev else None
        chosen = choose_event(rec, event, found)
        if chosen is None:
            continue
        if rec.paused:  # held: kept in its mailbox until it is resumed
            db.execute(_INSERT_MESSAGE, (rec.run_id, topic, chosen[1], None, to_us(now)))
            update(db, tuple(row), apply_hold(rec, now, topic, chosen[0]))
            continue
        update(db, tuple(row), _take(db, rec, topic, chosen[0], chosen[1], now))
        resumed.append(rec.run_id)
    return Delivery(resumed=resumed, after=rows[-1][0] if len(rows) >= limit else None)


def emit_event(
    db: sqlite3.Connection,
    topic: str,
    value: bytes,
    now: datetime,
    retain: float | None,
    limit: int,
) -> tuple[Event, Delivery]:
    event = append_event(db, topic, value, now, retain)
    return event, deliver_event(db, event, now, 0, limit)


def send_message(
    db: sqlite3.Connection,
    run_id: str,
    topic: str,
    value: bytes,
    now: datetime,
    key: str | None,
) -> SendResult:
    row = row_of(db, run_id)
    if row is None:
        return SendResult(outcome="not_found")
    rec = record_from_row(row)
    if key is not None:
        sql = "SELECT 1 FROM messages WHERE run_id = ? AND key = ?"
        if db.execute(sql, (run_id, key)).fetchone() is not None:
            return SendResult(outcome="duplicate", record=rec)
    if rec.status.is_terminal:
        return SendResult(outcome="ended", record=rec)
    if waits_on(rec, topic) and not rec.paused:
        new = _take(db, rec, topic, None, value, now)
        update(db, row, new)
        if key is not None:  # taken at once: only its key is kept
            db.execute(_INSERT_MESSAGE, (run_id, topic, None, key, to_us(now)))
        return SendResult(outcome="accepted", resumed=True, record=new)
    db.execute(_INSERT_MESSAGE, (run_id, topic, value, key, to_us(now)))
    return SendResult(outcome="accepted", record=rec)


def prune_events(db: sqlite3.Connection, now: datetime) -> int:
    return db.execute("DELETE FROM events WHERE expires_at <= ?", (to_us(now),)).rowcount


def merge_waiting(one: list[Any], many: list[Any], limit: int) -> list[Any]:
    """The first ``limit`` rows of two lists of waiting runs' rows, each in ``seq`` order
    (:data:`WAITING_ONE` and :data:`WAITING_MANY`), in ``seq`` order."""
    if not many:
        return one[:limit]
    return sorted(one + many, key=lambda r: int(r[0]))[:limit]


def _waiting(db: sqlite3.Connection, topic: str, after: int, limit: int) -> list[Any]:
    params = (topic, after, limit)
    one = db.execute(WAITING_ONE, params).fetchall()
    return merge_waiting(one, db.execute(WAITING_MANY, params).fetchall(), limit)
