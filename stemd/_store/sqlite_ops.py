"""The SQLite store's write operations, run by the writer inside a transaction.

Each is a plain function of the writer's connection. They mirror
:class:`~stemd._store.memory.MemoryStore` exactly and decide nothing themselves: every
change of a record comes from :mod:`stemd._store.transitions`. A refusal (``LeaseLost``)
is raised before anything is written, as the writer's batching requires.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from stemd._errors import LeaseLost
from stemd._model import RunStatus
from stemd._store.base import (
    Checkpoint,
    Claim,
    CommitResult,
    Complete,
    Delivery,
    Event,
    FireResult,
    Outcome,
    RunRecord,
    SendResult,
    Suspend,
    WorkflowInfo,
    cursor_of,
    topics_of,
)
from stemd._store.sqlite_schema import (
    RUN_COLUMNS,
    from_us,
    record_from_row,
    record_to_row,
    to_us,
)
from stemd._store.transitions import (
    apply_cancel,
    apply_claim,
    apply_delivery,
    apply_event,
    apply_fire,
    apply_outcome,
    apply_rewind,
    choose_event,
    is_runnable,
    rewind_cut,
    waits_for_events,
    waits_on,
)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

__all__ = [
    "append_event",
    "cancel",
    "checkpoint_from_row",
    "checkpoints",
    "claim",
    "commit",
    "create_run",
    "data_version",
    "deliver_event",
    "emit_event",
    "fire_timer",
    "prune_events",
    "register_workflows",
    "renew_lease",
    "rewind",
    "save_checkpoint",
    "send_message",
    "workflow_from_row",
]

_COLS = ", ".join(RUN_COLUMNS)
SELECT_RUN = f"SELECT {_COLS} FROM runs WHERE run_id = ?"
SELECT_CHECKPOINTS = "SELECT name, value, written_at FROM checkpoints WHERE run_id = ? ORDER BY seq"
_INSERT_RUN = (
    f"INSERT INTO runs ({_COLS}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
    " ON CONFLICT (run_id) DO NOTHING"
)
_UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (run_id, name, value, written_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (run_id, name) DO UPDATE"
    " SET value = excluded.value, written_at = excluded.written_at"
)
_TOUCH_OWNED = (
    "UPDATE runs SET updated_at = ? WHERE run_id = ? AND token = ? AND status = 'running'"
)
_RENEW = (
    "UPDATE runs SET lease_expires_at = ?, updated_at = ?"
    " WHERE run_id = ? AND token = ? AND status = 'running'"
)
_WAITING_ON_CHILD = (
    f"SELECT {_COLS} FROM runs"
    " WHERE wait_child = ? AND status = 'suspended' AND wait_child IS NOT NULL ORDER BY run_id"
)
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
_WAIT_TOPICS = RUN_COLUMNS.index("wait_topics")
_EVENT_FLOOR = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
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
SELECT_WORKFLOWS = "SELECT name, kind, steps, version, registered_at FROM workflows ORDER BY name"
_UPSERT_WORKFLOW = (
    "INSERT INTO workflows (name, kind, steps, version, registered_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, steps = excluded.steps,"
    " version = excluded.version, registered_at = excluded.registered_at"
)
_steps_decoder = msgspec.json.Decoder(tuple[str, ...])
_UPDATES: dict[tuple[int, ...], str] = {}


# -- helpers ---------------------------------------------------------------------------


def _update(db: sqlite3.Connection, old: tuple[Any, ...], new: RunRecord) -> None:
    """Write the columns of ``new`` that differ from the stored row ``old``."""
    row = record_to_row(new)
    changed = tuple(i for i in range(len(row)) if row[i] != old[i])
    if not changed:
        return
    sql = _UPDATES.get(changed)
    if sql is None:
        sets = ", ".join(f"{RUN_COLUMNS[i]} = ?" for i in changed)
        sql = _UPDATES[changed] = f"UPDATE runs SET {sets} WHERE run_id = ?"
    db.execute(sql, (*(row[i] for i in changed), new.run_id))
    if _WAIT_TOPICS in changed:
        if old[_WAIT_TOPICS] is not None:
            db.execute("DELETE FROM run_waits WHERE run_id = ?", (new.run_id,))
        if new.wait_topics:
            db.executemany(
                "INSERT OR IGNORE INTO run_waits (topic, seq, run_id)"
                " SELECT ?, seq, run_id FROM runs WHERE run_id = ?",
                [(topic, new.run_id) for topic in new.wait_topics],
            )


def _row(db: sqlite3.Connection, run_id: str) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = db.execute(SELECT_RUN, (run_id,)).fetchone()
    return row


def _lease_lost(run_id: str) -> LeaseLost:
    return LeaseLost(f"run {run_id} is no longer owned by this worker")


def _owned(db: sqlite3.Connection, run_id: str, token: int) -> tuple[tuple[Any, ...], RunRecord]:
    row = _row(db, run_id)
    if row is None:
        raise _lease_lost(run_id)
    rec = record_from_row(row)
    if rec.token != token or rec.status is not RunStatus.RUNNING:
        raise _lease_lost(run_id)
    return row, rec


def _put_checkpoint(
    db: sqlite3.Connection, run_id: str, name: str, value: bytes, now: datetime
) -> None:
    db.execute(_UPSERT_CHECKPOINT, (run_id, name, value, to_us(now)))


def checkpoint_from_row(row: tuple[Any, ...] | sqlite3.Row) -> Checkpoint:
    """The Checkpoint of a row selected by :data:`SELECT_CHECKPOINTS`."""
    name, value, written_at = row
    return Checkpoint(name, value, None if written_at is None else from_us(written_at))


def checkpoints(db: sqlite3.Connection, run_id: str) -> list[Checkpoint]:
    """The run's checkpoints in write order."""
    return [checkpoint_from_row(r) for r in db.execute(SELECT_CHECKPOINTS, (run_id,))]


def _wake_parents(db: sqlite3.Connection, child_id: str, now: datetime) -> tuple[str, ...]:
    woken = []
    for row in db.execute(_WAITING_ON_CHILD, (child_id,)).fetchall():
        _update(db, row, apply_event(record_from_row(row), now))
        woken.append(row[0])
    return tuple(woken)


# -- the operations --------------------------------------------------------------------


def data_version(db: sqlite3.Connection) -> int:
    """``PRAGMA data_version`` of the writer's connection: it moves only when another
    connection (another process) commits."""
    (version,) = db.execute("PRAGMA data_version").fetchone()
    return int(version)


def register_workflows(
    db: sqlite3.Connection, workflows: Sequence[WorkflowInfo], now: datetime
) -> None:
    at = to_us(now)
    db.executemany(
        _UPSERT_WORKFLOW,
        [
            (
                w.name,
                w.kind,
                None if w.steps is None else msgspec.json.encode(w.steps).decode(),
                w.version,
                at,
            )
            for w in workflows
        ],
    )


def workflow_from_row(row: tuple[Any, ...] | sqlite3.Row) -> WorkflowInfo:
    """The WorkflowInfo of a row selected by :data:`SELECT_WORKFLOWS`."""
    name, kind, steps, version, registered_at = row
    return WorkflowInfo(
        name=name,
        kind=kind,
        steps=None if steps is None else _steps_decoder.decode(steps),
        version=version,
        registered_at=from_us(registered_at),
    )


def create_run(db: sqlite3.Connection, record: RunRecord) -> tuple[RunRecord, bool]:
    floor = db.execute(_EVENT_FLOOR).fetchone()
    record = msgspec.structs.replace(record, event_floor=floor[0] if floor else 0)
    if db.execute(_INSERT_RUN, record_to_row(record)).rowcount == 1:
        return record, True
    row = _row(db, record.run_id)
    assert row is not None  # the conflict was on this run id, inside this transaction
    return record_from_row(row), False


def claim(
    db: sqlite3.Connection, run_id: str, owner: str, now: datetime, lease: float
) -> Claim | None:
    row = _row(db, run_id)
    if row is None:
        return None
    rec = record_from_row(row)
    if not is_runnable(rec, now):
        return None
    new = apply_claim(rec, owner, now, lease)
    _update(db, row, new)
    # Token 0: never claimed, resumed, cancelled or rewound, so nothing can have written
    # a checkpoint yet (the first claim of every run skips the query).
    cps = checkpoints(db, run_id) if rec.token else []
    return Claim(token=new.token, record=new, checkpoints=cps)


def renew_lease(
    db: sqlite3.Connection, run_id: str, token: int, now: datetime, lease: float
) -> None:
    expires = to_us(now + timedelta(seconds=lease))
    if db.execute(_RENEW, (expires, to_us(now), run_id, token)).rowcount != 1:
        raise _lease_lost(run_id)


def save_checkpoint(
    db: sqlite3.Connection, run_id: str, token: int, checkpoint: Checkpoint, now: datetime
) -> None:
    # The ownership check is the conditional update itself: on a stale token it changes
    # nothing and the refusal happens before any write.
    if db.execute(_TOUCH_OWNED, (to_us(now), run_id, token)).rowcount != 1:
        raise _lease_lost(run_id)
    _put_checkpoint(db, run_id, checkpoint.name, checkpoint.value, now)


def commit(
    db: sqlite3.Connection, run_id: str, token: int, outcome: Outcome, now: datetime
) -> CommitResult:
    row, rec = _owned(db, run_id, token)
    child_ended = False
    if isinstance(outcome, Suspend) and outcome.wait_child is not None:
        child = _row(db, outcome.wait_child)
        child_ended = child is None or RunStatus(child[2]).is_terminal
    if isinstance(outcome, (Complete, Suspend)):
        for cp in outcome.checkpoints:
            _put_checkpoint(db, run_id, cp.name, cp.value, now)
    new = apply_outcome(rec, outcome, now, child_ended=child_ended)
    if waits_for_events(new):
        new = _satisfy(db, new, now)
    _update(db, row, new)
    woken = _wake_parents(db, run_id, now) if new.status.is_terminal else ()
    return CommitResult(record=new, woken=woken)


# -- events and messages ---------------------------------------------------------------


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
        _put_checkpoint(db, rec.run_id, rec.wait_key, value, now)
    return apply_delivery(rec, now, topic, seq)


def _satisfy(db: sqlite3.Connection, rec: RunRecord, now: datetime) -> RunRecord:
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
        _update(db, tuple(row), _take(db, rec, topic, chosen[0], chosen[1], now))
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
    row = _row(db, run_id)
    if row is None:
        return SendResult(outcome="not_found")
    rec = record_from_row(row)
    if key is not None:
        sql = "SELECT 1 FROM messages WHERE run_id = ? AND key = ?"
        if db.execute(sql, (run_id, key)).fetchone() is not None:
            return SendResult(outcome="duplicate", record=rec)
    if rec.status.is_terminal:
        return SendResult(outcome="ended", record=rec)
    if waits_on(rec, topic):
        new = _take(db, rec, topic, None, value, now)
        _update(db, row, new)
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


def _delete(db: sqlite3.Connection, run_id: str) -> None:
    db.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))
    db.execute("DELETE FROM messages WHERE run_id = ?", (run_id,))
    db.execute("DELETE FROM run_waits WHERE run_id = ?", (run_id,))
    db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))


def fire_timer(
    db: sqlite3.Connection, run_id: str, now: datetime, timeout_value: bytes
) -> FireResult:
    row = _row(db, run_id)
    if row is None:
        return FireResult(action="none")
    rec = record_from_row(row)
    action, new, _ = apply_fire(rec, now)
    if action == "none":
        return FireResult(action="none", record=rec)
    if action == "deleted" or new is None:
        _delete(db, run_id)
        return FireResult(action="deleted")
    if action == "woken" and new.resume_key is not None:
        _put_checkpoint(db, run_id, new.resume_key, timeout_value, now)
    _update(db, row, new)
    woken = _wake_parents(db, run_id, now) if action == "cancelled" else ()
    return FireResult(action=action, record=new, woken=woken)


def cancel(db: sqlite3.Connection, run_id: str, reason: str, now: datetime) -> CommitResult | None:
    row = _row(db, run_id)
    if row is None:
        return None
    rec = record_from_row(row)
    if rec.status.is_terminal:
        return None
    new = apply_cancel(rec, reason, now)
    _update(db, row, new)
    return CommitResult(record=new, woken=_wake_parents(db, run_id, now))


def rewind(db: sqlite3.Connection, run_id: str, step: str, now: datetime) -> RunRecord | None:
    row = _row(db, run_id)
    if row is None:
        return None
    names = [
        name
        for (name,) in db.execute(
            "SELECT name FROM checkpoints WHERE run_id = ? ORDER BY seq", (run_id,)
        )
    ]
    cut = rewind_cut(names, step)
    if cut:
        db.executemany(
            "DELETE FROM checkpoints WHERE run_id = ? AND name = ?", [(run_id, n) for n in cut]
        )
    new = apply_rewind(record_from_row(row), now)
    _update(db, row, new)
    return new
