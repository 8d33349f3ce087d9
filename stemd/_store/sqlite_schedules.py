"""The SQLite store's schedules (table ``schedules``, migration 0008) and forked runs.

The writes are functions of the writer's connection, run in its transactions;
:class:`SqliteSchedules` is the part of :class:`~stemd._store.sqlite.SqliteStore` that
submits them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stemd._store import sqlite_ops as ops
from stemd._store.schedules import ScheduleRecord, decode_schedule, encode_schedule
from stemd._store.sqlite_rows import put_checkpoint

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Sequence

    from stemd._store.base import Checkpoint, RunRecord
    from stemd._store.sqlite_writer import Writer

__all__ = ["SqliteSchedules", "fork_run", "put_schedule"]

_SELECT = "SELECT doc, revision FROM schedules WHERE name = ?"
_SELECT_ALL = "SELECT doc, revision FROM schedules ORDER BY name"
_INSERT = "INSERT OR IGNORE INTO schedules (name, doc, revision) VALUES (?, ?, 1)"
_UPDATE = "UPDATE schedules SET doc = ?, revision = revision + 1 WHERE name = ? AND revision = ?"


def put_schedule(
    db: sqlite3.Connection, record: ScheduleRecord, revision: int
) -> ScheduleRecord | None:
    """Compare-and-set the schedule's row over ``revision`` (0: insert)."""
    doc = encode_schedule(record)
    if revision == 0:
        done = db.execute(_INSERT, (record.name, doc)).rowcount == 1
    else:
        done = db.execute(_UPDATE, (doc, record.name, revision)).rowcount == 1
    return decode_schedule(doc, revision + 1) if done else None


def fork_run(
    db: sqlite3.Connection, record: RunRecord, checkpoints: Sequence[Checkpoint]
) -> tuple[RunRecord, bool]:
    """Create the run and its checkpoints in one transaction (nothing if it exists)."""
    stored, created = ops.create_run(db, record)
    if created:
        for cp in checkpoints:
            put_checkpoint(db, record.run_id, cp.name, cp.value, record.created_at)
    return stored, created


class SqliteSchedules:
    """The schedules and forks of the SQLite store (a mixin of it)."""

    @property
    def writer(self) -> Writer:
        raise NotImplementedError  # pragma: no cover - the store's

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        raise NotImplementedError  # pragma: no cover - the store's

    async def get_schedule(self, name: str) -> ScheduleRecord | None:
        rows = await self._fetchall(_SELECT, (name,))
        return decode_schedule(rows[0][0], rows[0][1]) if rows else None

    async def put_schedule(self, record: ScheduleRecord, revision: int) -> ScheduleRecord | None:
        return await self.writer.submit(put_schedule, record, revision)

    async def list_schedules(self) -> list[ScheduleRecord]:
        return [decode_schedule(doc, rev) for doc, rev in await self._fetchall(_SELECT_ALL, ())]

    async def fork_run(
        self, record: RunRecord, checkpoints: Sequence[Checkpoint]
    ) -> tuple[RunRecord, bool]:
        return await self.writer.submit(fork_run, record, list(checkpoints))
