"""The SQLite store's row helpers, shared by its write operations
(:mod:`~stemd._store.sqlite_ops`, :mod:`~stemd._store.sqlite_events`): read a run's row,
write the columns of a record that changed, upsert a checkpoint. :func:`update` and
:func:`entry_of` keep the writer's row cache (:mod:`~stemd._store.sqlite_cache`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stemd._store.sqlite_cache import rows_of
from stemd._store.sqlite_schema import RUN_COLUMNS, record_from_row, record_to_row, to_us

if TYPE_CHECKING:
    import sqlite3
    from datetime import datetime

    from stemd._store.base import RunRecord

__all__ = ["COLS", "SELECT_RUN", "entry_of", "put_checkpoint", "row_of", "update"]

COLS = ", ".join(RUN_COLUMNS)
SELECT_RUN = f"SELECT {COLS} FROM runs WHERE run_id = ?"
_WAIT_TOPICS = RUN_COLUMNS.index("wait_topics")
_UPSERT_CHECKPOINT = (
    "INSERT INTO checkpoints (run_id, name, value, written_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (run_id, name) DO UPDATE"
    " SET value = excluded.value, written_at = excluded.written_at"
)
_UPDATES: dict[tuple[int, ...], str] = {}


def update(db: sqlite3.Connection, old: tuple[Any, ...], new: RunRecord) -> None:
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
    rows = rows_of(db)
    if rows is not None:
        rows.put(row, new)


def row_of(db: sqlite3.Connection, run_id: str) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = db.execute(SELECT_RUN, (run_id,)).fetchone()
    return row


def entry_of(db: sqlite3.Connection, run_id: str) -> tuple[tuple[Any, ...], RunRecord] | None:
    """The row of ``run_id`` and its record: from the writer's row cache when it has
    them, else read (and remembered)."""
    rows = rows_of(db)
    if rows is not None:
        entry = rows.get(run_id)
        if entry is not None:
            return entry
    row = row_of(db, run_id)
    if row is None:
        return None
    rec = record_from_row(row)
    if rows is not None:
        rows.put(row, rec)
    return row, rec


def put_checkpoint(
    db: sqlite3.Connection, run_id: str, name: str, value: bytes, now: datetime
) -> None:
    db.execute(_UPSERT_CHECKPOINT, (run_id, name, value, to_us(now)))
