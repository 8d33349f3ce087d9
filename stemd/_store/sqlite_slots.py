"""The SQLite store's slots (:class:`~stemd._store.capabilities.Slots`), table ``slots``:
each acquisition is one writer transaction (``BEGIN IMMEDIATE``), so several processes
sharing the file never hold more than the limit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stemd._store.sqlite_schema import to_us

if TYPE_CHECKING:
    import sqlite3
    from datetime import datetime

    from stemd._store.sqlite_writer import Writer

__all__ = ["SqliteSlotHolders", "acquire_slot", "release_slot", "slot_holders"]


def acquire_slot(
    db: sqlite3.Connection,
    scope: str,
    holder: str,
    limit: int,
    now: datetime,
    expires_at: datetime,
) -> bool:
    db.execute("DELETE FROM slots WHERE scope = ? AND expires_at <= ?", (scope, to_us(now)))
    renewed = db.execute(
        "UPDATE slots SET expires_at = ? WHERE scope = ? AND holder = ?",
        (to_us(expires_at), scope, holder),
    ).rowcount
    if renewed:
        return True
    (held,) = db.execute("SELECT count(*) FROM slots WHERE scope = ?", (scope,)).fetchone()
    if held >= limit:
        return False
    db.execute(
        "INSERT INTO slots (scope, holder, expires_at) VALUES (?, ?, ?)",
        (scope, holder, to_us(expires_at)),
    )
    return True


def slot_holders(db: sqlite3.Connection, scope: str, now: datetime) -> list[str]:
    rows = db.execute(
        "SELECT holder FROM slots WHERE scope = ? AND expires_at > ? ORDER BY holder",
        (scope, to_us(now)),
    ).fetchall()
    return [holder for (holder,) in rows]


class SqliteSlotHolders:
    """Who holds the slots of a scope (a mixin of the SQLite store: read by its writer, so
    that a read follows the acquisitions it answers)."""

    @property
    def writer(self) -> Writer:
        raise NotImplementedError  # pragma: no cover - the store's

    async def slot_holders(self, scope: str, now: datetime) -> list[str]:
        """See :meth:`Slots.slot_holders <stemd._store.capabilities.Slots.slot_holders>`."""
        return await self.writer.submit(slot_holders, scope, now, durable=False)


def release_slot(db: sqlite3.Connection, scope: str, holder: str) -> None:
    db.execute("DELETE FROM slots WHERE scope = ? AND holder = ?", (scope, holder))
