"""The SQLite writer's cache of the run rows it wrote itself.

A run's hot path is create, claim, checkpoints and commit, all written by this process's
one writer. The claim and the commit each began with a ``SELECT`` of the run's row and its
decoding, although the writer had itself written that very row moments before. The cache
keeps, per run, the row the writer last wrote (or read) and its record, so that they skip
both. It also keeps what a new run of a workflow starts with (the event floor, and whether
the workflow is paused), which only events and pauses change, so that a start skips that
read too; and whether any run waits for a child, so that a run's end skips looking for
parents to wake while none does.

What keeps it true:

- Only the writer's connection uses it, inside the writer's transactions.
- Each transaction first reads ``PRAGMA data_version`` (with the write lock held, after
  ``BEGIN IMMEDIATE``): when another connection (another process) has committed since the
  previous transaction, the cache is emptied.
- Only the operations listed as keeping it (:data:`stemd._store.sqlite_ops.KEEPS_ROWS`)
  run with it on: every one of them writes a run's row through
  :func:`stemd._store.sqlite_rows.update` (which records what it wrote) or records or
  drops the row itself. A transaction holding any other operation runs with the cache off
  and emptied, so no unlisted write can leave a stale row behind.
- A rollback empties it (what was recorded was never committed).
- A run that ends leaves it. Past :data:`LIMIT` runs it takes no new ones (the runs
  it holds are the oldest, the first to be claimed and to end) until some have ended.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from stemd._store.base import RunRecord

__all__ = ["LIMIT", "RowCache", "WriterConnection", "rows_of"]

LIMIT = 4096
"""Most runs kept (a backlog of created runs can be larger; each entry is ~1 KiB)."""

Entry = tuple[tuple[Any, ...], "RunRecord"]


class RowCache:
    """Run rows (and their records) as the writer's own connection last wrote them."""

    __slots__ = ("_entries", "_version", "child_waits", "created", "enabled", "keeps")

    def __init__(self, keeps: Collection[Callable[..., Any]]) -> None:
        self.keeps = frozenset(keeps)
        self.enabled = False
        self._entries: dict[str, Entry] = {}
        self._version: int | None = None
        # Per workflow: (the last event's position, paused) for a run created now.
        self.created: dict[str, tuple[int | None, int]] = {}
        # Whether a suspended run may wait for a child (None: not known, to be read).
        self.child_waits: bool | None = None

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, db: sqlite3.Connection, fns: Collection[Callable[..., Any]]) -> None:
        """At the start of a transaction (the write lock held) of the operations ``fns``:
        empty the cache if another connection committed since, and turn it on only if
        every one of ``fns`` keeps it."""
        (version,) = db.execute("PRAGMA data_version").fetchone()
        if version != self._version:
            self._version = version
            self._forget()
        self.enabled = all(fn in self.keeps for fn in fns)
        if not self.enabled:
            self._forget()

    def _forget(self) -> None:
        self._entries.clear()
        self.created.clear()
        self.child_waits = None

    def clear(self) -> None:
        """Forget every row (a rollback)."""
        self._forget()
        self.enabled = False

    def get(self, run_id: str) -> Entry | None:
        """The row and record of ``run_id``, if known."""
        if not self.enabled:
            return None
        return self._entries.get(run_id)

    def put(self, row: tuple[Any, ...], record: RunRecord) -> None:
        """Remember ``row`` (all of ``RUN_COLUMNS``) and its record ``record``."""
        if not self.enabled:
            return
        entries = self._entries
        if record.wait_child is not None:
            self.child_waits = True
        if record.status.is_terminal:
            entries.pop(record.run_id, None)
            return
        if len(entries) >= LIMIT and record.run_id not in entries:
            return
        entries[record.run_id] = (row, record)

    def drop(self, run_id: str) -> None:
        """Forget ``run_id``'s row (it was written some other way)."""
        self._entries.pop(run_id, None)


class WriterConnection(sqlite3.Connection):
    """The writer's connection, carrying its :class:`RowCache` (``rows``)."""

    rows: RowCache | None = None


def rows_of(db: sqlite3.Connection) -> RowCache | None:
    """The row cache of ``db`` if it is on for this transaction, else ``None``."""
    rows: RowCache | None = getattr(db, "rows", None)
    return rows if rows is not None and rows.enabled else None
