"""The SQLite store's write operations, run by the writer inside a transaction.

Each is a plain function of the writer's connection. They mirror
:class:`~stemd._store.memory.MemoryStore` exactly and decide nothing themselves: every
change of a record comes from :mod:`stemd._store.transitions`. A refusal (``LeaseLost``)
is raised before anything is written, as the writer's batching requires.
"""

from __future__ import annotations

import contextlib
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
    FireResult,
    Outcome,
    Release,
    RunRecord,
    Suspend,
    WorkflowInfo,
)
from stemd._store.sqlite_cache import rows_of
from stemd._store.sqlite_events import (
    WAITING_MANY,
    WAITING_ONE,
    append_event,
    deliver_event,
    emit_event,
    merge_waiting,
    prune_events,
    satisfy,
    send_message,
)
from stemd._store.sqlite_rows import COLS, SELECT_RUN, entry_of, put_checkpoint, row_of, update
from stemd._store.sqlite_schema import (
    RUN_COLUMNS,
    from_us,
    record_from_row,
    record_to_row,
    to_us,
)
from stemd._store.sqlite_sessions import put_session, renew_session
from stemd._store.transitions import (
    apply_cancel,
    apply_claim,
    apply_event,
    apply_fire,
    apply_outcome,
    apply_pause,
    apply_pause_stop,
    apply_resume,
    apply_rewind,
    created_paused,
    is_runnable,
    rewind_cut,
    timeout_value_of,
    waits_for_events,
)

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

    from stemd._store.base import TimeoutValue

__all__ = [
    "KEEPS_ROWS",
    "SELECT_RUN",
    "WAITING_MANY",
    "WAITING_ONE",
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
    "give_back",
    "merge_waiting",
    "pause",
    "pause_workflow",
    "prune_events",
    "register_workflows",
    "renew_lease",
    "resume",
    "rewind",
    "save_checkpoint",
    "send_message",
    "workflow_from_row",
]

_COLS = COLS
SELECT_CHECKPOINTS = "SELECT name, value, written_at FROM checkpoints WHERE run_id = ? ORDER BY seq"
_INSERT_RUN = (
    f"INSERT INTO runs ({_COLS}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
    " ON CONFLICT (run_id) DO NOTHING"
)
_TOUCH_OWNED = (
    "UPDATE runs SET updated_at = ? WHERE run_id = ? AND token = ? AND status = 'running'"
    " RETURNING paused"
)
_RENEW = (
    "UPDATE runs SET lease_expires_at = ?, updated_at = ?"
    " WHERE run_id = ? AND token = ? AND status = 'running'"
)
_WAITING_ON_CHILD = (
    f"SELECT {_COLS} FROM runs"
    " WHERE wait_child = ? AND status = 'suspended' AND wait_child IS NOT NULL ORDER BY run_id"
)
_ANY_CHILD_WAIT = (
    "SELECT EXISTS (SELECT 1 FROM runs INDEXED BY runs_by_child"
    " WHERE wait_child IS NOT NULL AND status = 'suspended')"
)
# A new run's event floor (the last event's position) and whether its workflow is paused,
# in one statement.
_CREATE_STATE = (
    "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'events'),"
    " EXISTS (SELECT 1 FROM paused_workflows WHERE name = ?)"
)
SELECT_WORKFLOWS = "SELECT name, kind, steps, version, registered_at FROM workflows ORDER BY name"
_UPSERT_WORKFLOW = (
    "INSERT INTO workflows (name, kind, steps, version, registered_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, steps = excluded.steps,"
    " version = excluded.version, registered_at = excluded.registered_at"
)
_steps_decoder = msgspec.json.Decoder(tuple[str, ...])
_UPDATED_AT = RUN_COLUMNS.index("updated_at")
SELECT_PAUSED_WORKFLOWS = "SELECT name FROM paused_workflows ORDER BY name"


# -- helpers ---------------------------------------------------------------------------


def _lease_lost(run_id: str) -> LeaseLost:
    return LeaseLost(f"run {run_id} is no longer owned by this worker")


def _owned(db: sqlite3.Connection, run_id: str, token: int) -> tuple[tuple[Any, ...], RunRecord]:
    entry = entry_of(db, run_id)
    if entry is None:
        raise _lease_lost(run_id)
    row, rec = entry
    if rec.token != token or rec.status is not RunStatus.RUNNING:
        raise _lease_lost(run_id)
    return row, rec


def checkpoint_from_row(row: tuple[Any, ...] | sqlite3.Row) -> Checkpoint:
    """The Checkpoint of a row selected by :data:`SELECT_CHECKPOINTS`."""
    name, value, written_at = row
    return Checkpoint(name, value, None if written_at is None else from_us(written_at))


def checkpoints(db: sqlite3.Connection, run_id: str) -> list[Checkpoint]:
    """The run's checkpoints in write order."""
    return [checkpoint_from_row(r) for r in db.execute(SELECT_CHECKPOINTS, (run_id,))]


def _wake_parents(db: sqlite3.Connection, child_id: str, now: datetime) -> tuple[str, ...]:
    rows = rows_of(db)
    if rows is not None:
        if rows.child_waits is None:
            rows.child_waits = bool(db.execute(_ANY_CHILD_WAIT).fetchone()[0])
        if not rows.child_waits:
            return ()  # no run waits for a child: none to look for
    woken = []
    for row in db.execute(_WAITING_ON_CHILD, (child_id,)).fetchall():
        if record_from_row(row).paused:
            continue  # resuming it looks at its child
        update(db, row, apply_event(record_from_row(row), now))
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
    rows = rows_of(db)
    state = rows.created.get(record.workflow) if rows is not None else None
    if state is None:
        state = db.execute(_CREATE_STATE, (record.workflow,)).fetchone()
        if rows is not None:
            rows.created[record.workflow] = state
    floor, paused = state
    record = msgspec.structs.replace(record, event_floor=floor or 0)
    if paused:
        record = created_paused(record)
    values = record_to_row(record)
    if db.execute(_INSERT_RUN, values).rowcount == 1:
        if rows is not None:
            rows.put(values, record)
        return record, True
    row = row_of(db, record.run_id)
    assert row is not None  # the conflict was on this run id, inside this transaction
    return record_from_row(row), False


def claim(
    db: sqlite3.Connection, run_id: str, owner: str, now: datetime, lease: float
) -> Claim | None:
    entry = entry_of(db, run_id)
    if entry is None:
        return None
    row, rec = entry
    if not is_runnable(rec, now):
        return None
    new = apply_claim(rec, owner, now, lease)
    update(db, row, new)
    # Token 0: never claimed, resumed, cancelled or rewound, so nothing can have written
    # a checkpoint yet (the first claim of every run skips the query).
    cps = checkpoints(db, run_id) if rec.token else []
    return Claim(token=new.token, record=new, checkpoints=cps)


def give_back(db: sqlite3.Connection, claim: Claim) -> None:
    """Release a claim that never reached its claimant (it was cancelled), as the
    claimant would have: the run is runnable again at once, unless something else has
    moved it on since."""
    with contextlib.suppress(LeaseLost):
        commit(db, claim.record.run_id, claim.token, Release(), claim.record.updated_at)


def renew_lease(
    db: sqlite3.Connection, run_id: str, token: int, now: datetime, lease: float
) -> None:
    expires = to_us(now + timedelta(seconds=lease))
    if db.execute(_RENEW, (expires, to_us(now), run_id, token)).rowcount != 1:
        raise _lease_lost(run_id)
    rows = rows_of(db)
    if rows is not None:
        rows.drop(run_id)


def save_checkpoint(
    db: sqlite3.Connection, run_id: str, token: int, checkpoint: Checkpoint, now: datetime
) -> bool:
    """Record the checkpoint; ``True`` when the run is paused and was given back with it
    (its owner must stop: the caller raises LeaseLost once this is committed)."""
    # The ownership check is the conditional update itself: on a stale token it changes
    # nothing and the refusal happens before any write.
    at = to_us(now)
    touched = db.execute(_TOUCH_OWNED, (at, run_id, token)).fetchall()
    if not touched:
        raise _lease_lost(run_id)
    put_checkpoint(db, run_id, checkpoint.name, checkpoint.value, now)
    rows = rows_of(db)
    if not touched[0][0]:
        entry = rows.get(run_id) if rows is not None else None
        if rows is not None and entry is not None:
            old, rec = entry
            touched_row = (*old[:_UPDATED_AT], at, *old[_UPDATED_AT + 1 :])
            rows.put(touched_row, msgspec.structs.replace(rec, updated_at=now))
        return False
    if rows is not None:
        rows.drop(run_id)
    row = row_of(db, run_id)
    assert row is not None
    update(db, row, apply_pause_stop(record_from_row(row), now))
    return True


def commit(
    db: sqlite3.Connection, run_id: str, token: int, outcome: Outcome, now: datetime
) -> CommitResult:
    row, rec = _owned(db, run_id, token)
    child_ended = False
    if isinstance(outcome, Suspend) and outcome.wait_child is not None:
        child = row_of(db, outcome.wait_child)
        child_ended = child is None or RunStatus(child[2]).is_terminal
    if isinstance(outcome, (Complete, Suspend)):
        for cp in outcome.checkpoints:
            put_checkpoint(db, run_id, cp.name, cp.value, now)
    new = apply_outcome(rec, outcome, now, child_ended=child_ended)
    if waits_for_events(new) and not new.paused:
        new = satisfy(db, new, now)
    update(db, row, new)
    woken = _wake_parents(db, run_id, now) if new.status.is_terminal else ()
    return CommitResult(record=new, woken=woken)


def _delete(db: sqlite3.Connection, run_id: str) -> None:
    db.execute("DELETE FROM checkpoints WHERE run_id = ?", (run_id,))
    db.execute("DELETE FROM messages WHERE run_id = ?", (run_id,))
    db.execute("DELETE FROM run_waits WHERE run_id = ?", (run_id,))
    db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))


def fire_timer(
    db: sqlite3.Connection, run_id: str, now: datetime, timeout: TimeoutValue
) -> FireResult:
    row = row_of(db, run_id)
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
        put_checkpoint(db, run_id, new.resume_key, timeout_value_of(timeout, rec), now)
    update(db, row, new)
    woken = _wake_parents(db, run_id, now) if action == "cancelled" else ()
    return FireResult(action=action, record=new, woken=woken)


def cancel(db: sqlite3.Connection, run_id: str, reason: str, now: datetime) -> CommitResult | None:
    row = row_of(db, run_id)
    if row is None:
        return None
    rec = record_from_row(row)
    if rec.status.is_terminal:
        return None
    new = apply_cancel(rec, reason, now)
    update(db, row, new)
    return CommitResult(record=new, woken=_wake_parents(db, run_id, now))


def rewind(db: sqlite3.Connection, run_id: str, step: str, now: datetime) -> RunRecord | None:
    row = row_of(db, run_id)
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
    update(db, row, new)
    return new


def pause(db: sqlite3.Connection, run_id: str, now: datetime) -> RunRecord | None:
    row = row_of(db, run_id)
    if row is None:
        return None
    rec = record_from_row(row)
    if rec.status.is_terminal or rec.paused:
        return None
    new = apply_pause(rec, now)
    update(db, row, new)
    return new


def resume(db: sqlite3.Connection, run_id: str, now: datetime) -> RunRecord | None:
    row = row_of(db, run_id)
    if row is None:
        return None
    rec = record_from_row(row)
    if not rec.paused:
        return None
    new = apply_resume(rec, now)
    if waits_for_events(new):
        new = satisfy(db, new, now)
    elif new.status is RunStatus.SUSPENDED and new.wait_child is not None:
        child = row_of(db, new.wait_child)
        if child is None or RunStatus(child[2]).is_terminal:
            new = apply_event(new, now)
    update(db, row, new)
    return new


def pause_workflow(db: sqlite3.Connection, workflow: str, paused: bool) -> bool:
    if paused:
        sql = "INSERT OR IGNORE INTO paused_workflows (name) VALUES (?)"
    else:
        sql = "DELETE FROM paused_workflows WHERE name = ?"
    return bool(db.execute(sql, (workflow,)).rowcount)


KEEPS_ROWS = (
    give_back,
    create_run,
    claim,
    renew_lease,
    save_checkpoint,
    commit,
    put_session,
    renew_session,
)
"""The operations that keep the writer's row cache (:mod:`~stemd._store.sqlite_cache`):
they write a run's row only through ``update`` or record or drop it themselves, and
anything else they write is no run row."""
