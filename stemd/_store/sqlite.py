"""The SQLite store: one database file, durable, safe for several processes.

- **WAL** journal, ``synchronous=FULL`` by default (every commit is fsynced);
  ``synchronous=NORMAL`` trades the last commits on power loss for speed.
- **One writer**: every write goes through :class:`~stemd._store.sqlite_writer.Writer`,
  which commits the requests of all concurrent workers in one transaction per batch
  (group commit). Reads use a separate connection and never wait for the writer.
- **Several processes** may share the file (two daemons, a daemon and a CLI): every write
  is a conditional transition inside ``BEGIN IMMEDIATE``, fenced by the run's token, so
  no two owners can both commit progress for a run. :meth:`SqliteStore.external_changes`
  tells the sweeper cheaply when another process has committed something.

URL: ``sqlite:///PATH`` with PATH relative to the working directory (``sqlite:///./x.db``)
or absolute with a fourth slash (``sqlite:////var/lib/stemd/stemd.db``). Options, as URL
query parameters or keywords: ``synchronous`` (``FULL`` | ``NORMAL``), ``busy_timeout``
and ``lock_timeout`` (seconds), ``max_batch``, ``create`` (``false``: open only a database
that exists; a missing file is a :class:`~stemd._errors.StoreError` and nothing is created).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import aiosqlite
import anyio

from stemd._errors import ConfigError, LeaseLost, StoreError
from stemd._model import RunStatus
from stemd._options import as_bool, convert_options
from stemd._store import sqlite_ops as ops
from stemd._store import sqlite_sessions as sessions_ops
from stemd._store import sqlite_slots as slots
from stemd._store.base import Page
from stemd._store.sqlite_cache import RowCache, WriterConnection
from stemd._store.sqlite_schedules import SqliteSchedules
from stemd._store.sqlite_schema import RUN_COLUMNS, from_us, migrate, record_from_row, to_us
from stemd._store.sqlite_writer import Writer, WriterStats, is_busy, while_busy
from stemd._urls import sqlite_path

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from stemd._store.base import (
        Checkpoint,
        Claim,
        CommitResult,
        Delivery,
        Event,
        FireResult,
        Outcome,
        RunRecord,
        SendResult,
        TimeoutValue,
        WorkflowInfo,
    )
    from stemd._store.sessions import Released, SessionRecord

__all__ = ["SqliteStore"]

_COLS = ", ".join(RUN_COLUMNS)
_SYNCHRONOUS = ("FULL", "NORMAL")
_RUNNABLE = (
    "SELECT run_id, queue FROM runs INDEXED BY runs_runnable"
    " WHERE status IN ('pending', 'running')"
    " AND (lease_expires_at IS NULL OR lease_expires_at <= ?)"
    " AND (resume_at IS NULL OR resume_at <= ?) AND paused = 0 LIMIT ?"
)
_DUE = (
    "SELECT timer_at, run_id FROM runs WHERE timer_at IS NOT NULL AND timer_at <= ?"
    " ORDER BY timer_at, run_id LIMIT ?"
)


def _limit(limit: int) -> int:
    """A row limit SQLite can bind: larger ones mean "all" (SQLite integers are 64-bit)."""
    return max(0, min(limit, 2**63 - 1))


def _page(rows: list[Any], limit: int) -> Page:
    """A page of ``rows`` (``seq`` then the run's columns), one more than ``limit`` asked
    for: whether that one came tells whether there is a next page."""
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(records=[record_from_row(r[1:]) for r in rows], next=rows[-1][0] if more else None)


def _pragmas(synchronous: str, busy_timeout: float) -> list[str]:
    return [
        f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}",
        f"PRAGMA synchronous = {synchronous}",
        "PRAGMA temp_store = MEMORY",
        "PRAGMA cache_size = -32768",
    ]


class SqliteStore(SqliteSchedules, slots.SqliteSlotHolders):
    """A :class:`~stemd._store.base.Store` in one SQLite database file.

    Args:
        path: the database file (created with its directory's permissions if missing).
        synchronous: ``"FULL"`` (fsync every commit: the default) or ``"NORMAL"``.
        busy_timeout: seconds a connection waits for a lock held by another process
            before the writer retries.
        lock_timeout: seconds the writer keeps retrying before a write fails with
            :class:`~stemd._errors.StoreError`.
        max_batch: most write requests committed in one transaction.
        create: create the database file when it is missing (the default); ``False``
            opens only an existing one (what readers want: a wrong path must not leave an
            empty database behind). The check is SQLite's own open flag, not a race-prone
            look beforehand.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        lock_timeout: float = 30.0,
        max_batch: int = 512,
        create: bool = True,
    ) -> None:
        sync = str(synchronous).upper()
        if sync not in _SYNCHRONOUS:
            raise ConfigError(f"store: synchronous must be FULL or NORMAL, not {synchronous!r}")
        if str(path) in ("", ":memory:"):
            raise ConfigError("store: SQLite needs a file path (use memory:// for no file)")
        if max_batch < 1:
            raise ConfigError("store: max_batch must be at least 1")
        self.path = Path(path)
        self.synchronous = sync
        self.busy_timeout = float(busy_timeout)
        self.lock_timeout = float(lock_timeout)
        self.max_batch = int(max_batch)
        self.create = bool(create)
        self._writer: Writer | None = None
        self._reader: aiosqlite.Connection | None = None
        self._point: sqlite3.Connection | None = None
        self._seen_version: int | None = None
        self._changes = 0

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SqliteStore:
        """The store named by ``sqlite:///PATH[?synchronous=NORMAL&busy_timeout=5]``;
        keyword ``options`` override the query."""
        if not url.startswith("sqlite:///"):
            raise ConfigError(f"store: expected sqlite:///PATH, got {url!r}")
        path = sqlite_path(url)
        query = url.partition("?")[2]
        merged: dict[str, Any] = {**dict(parse_qsl(query, keep_blank_values=True)), **options}
        kinds: dict[str, Callable[[Any], Any]] = {
            "synchronous": str,
            "busy_timeout": float,
            "lock_timeout": float,
            "max_batch": int,
            "create": as_bool,
        }
        kwargs = convert_options(merged, kinds, what="store", where=" (SQLite)")
        return cls(path, **kwargs)

    @property
    def writer(self) -> Writer:
        """The writer (only while the store is open)."""
        if self._writer is None:
            raise StoreError("the SQLite store is not open")
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        """The readers' connection (only while the store is open)."""
        if self._reader is None:
            raise StoreError("the SQLite store is not open")
        return self._reader

    def statistics(self) -> WriterStats:
        """The writer's counters: transactions, requests, the largest batch, retries."""
        return self.writer.statistics()

    # -- lifecycle ------------------------------------------------------------------------

    def _database(self) -> tuple[str | Path, bool]:
        """What to give ``sqlite3.connect`` (and whether it is a URI): the path, or with
        ``create=False`` a ``file:`` URI with ``mode=rw``, which fails on a missing file."""
        if self.create:
            return self.path, False
        return f"{self.path.absolute().as_uri()}?mode=rw", True

    def _connect_writer(self) -> sqlite3.Connection:
        database, uri = self._database()
        try:
            db = sqlite3.connect(
                database,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=512,
                uri=uri,
                factory=WriterConnection,
            )
        except sqlite3.OperationalError:
            if not self.create and not self.path.exists():
                raise StoreError(
                    f"no SQLite store at {self.path.absolute()}: the file does not exist"
                ) from None
            raise
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            self._enter_wal(db)
            for pragma in _pragmas(self.synchronous, self.busy_timeout):
                db.execute(pragma)
            db.execute("PRAGMA journal_size_limit = 67108864")
            migrate(db)
            db.rows = RowCache(ops.KEEPS_ROWS)
        except BaseException:
            db.close()
            raise
        return db

    def _enter_wal(self, db: sqlite3.Connection) -> None:
        # Switching a new file to WAL takes an exclusive lock, and SQLite answers "database
        # is locked" at once, without its busy handler, while another connection (a second
        # daemon or the CLI opening the same new file) is switching it or reading it
        # mid-switch: retry until busy_timeout, as every other lock wait does.
        (mode,) = while_busy(
            lambda: db.execute("PRAGMA journal_mode = WAL").fetchone(), self.busy_timeout
        )
        if str(mode).lower() != "wal":
            raise StoreError(f"SQLite refused WAL mode for {self.path} (got {mode!r})")

    def _connect_point(self) -> sqlite3.Connection:
        # Point reads (one run, its checkpoints) run on the event loop's thread: a WAL
        # read by key takes a few microseconds, far less than a hop to a reader thread.
        # They never wait: a lock (a rare WAL recovery) sends them to the reader thread.
        database, uri = self._database()
        point = sqlite3.connect(database, isolation_level=None, cached_statements=64, uri=uri)
        point.execute("PRAGMA busy_timeout = 0")
        point.execute("PRAGMA query_only = 1")
        return point

    async def open(self) -> None:
        if self._writer is not None:
            return
        db: sqlite3.Connection | None = None
        reader: aiosqlite.Connection | None = None
        try:
            db = await anyio.to_thread.run_sync(self._connect_writer)
            database, uri = self._database()
            reader = await aiosqlite.connect(database, isolation_level=None, uri=uri)
            for pragma in _pragmas(self.synchronous, self.busy_timeout):
                await reader.execute(pragma)
            await reader.execute("PRAGMA query_only = 1")
            point = self._connect_point()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if reader is not None:
                    await reader.close()
                if db is not None:
                    db.close()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open SQLite database {self.path}: {exc}") from exc
            raise
        writer = Writer(
            db,
            synchronous=self.synchronous,
            max_batch=self.max_batch,
            lock_timeout=self.lock_timeout,
        )
        writer.start()
        self._writer, self._reader, self._point = writer, reader, point

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        reader, self._reader = self._reader, None
        point, self._point = self._point, None
        if point is not None:
            point.close()
        with anyio.CancelScope(shield=True):
            try:
                if writer is not None:
                    # Queued writes are committed first: the thread drains its queue.
                    await writer.aclose()
            finally:
                if reader is not None:
                    await reader.close()
                if writer is not None and not writer.running:
                    # The last connection to close checkpoints the WAL: off the loop.
                    await anyio.to_thread.run_sync(writer.db.close)

    # -- writes (through the writer) ------------------------------------------------------

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        return await self.writer.submit(ops.create_run, record)

    async def claim(self, run_id: str, owner: str, now: datetime, lease: float) -> Claim | None:
        # Not fsynced on its own: losing a claim to a power loss is the same
        # as the claimant dying mid-step, and the claim is made durable by the claimant's
        # next checkpoint or commit anyway. A claim committed for a caller cancelled
        # meanwhile is given back (else the run would stay RUNNING under a lease, or a
        # live session, that nobody uses): the writer writes its undo.
        submit = self.writer.submit
        return await submit(ops.claim, run_id, owner, now, lease, durable=False, undo=ops.give_back)

    async def renew_lease(self, run_id: str, token: int, now: datetime, lease: float) -> None:
        await self.writer.submit(ops.renew_lease, run_id, token, now, lease, durable=False)

    async def save_checkpoint(
        self, run_id: str, token: int, checkpoint: Checkpoint, now: datetime
    ) -> None:
        if await self.writer.submit(ops.save_checkpoint, run_id, token, checkpoint, now):
            raise LeaseLost(f"run {run_id} is paused: it stops at this checkpoint")

    async def commit(
        self, run_id: str, token: int, outcome: Outcome, now: datetime
    ) -> CommitResult:
        return await self.writer.submit(ops.commit, run_id, token, outcome, now)

    async def append_event(
        self, topic: str, value: bytes, now: datetime, retain: float | None
    ) -> Event:
        return await self.writer.submit(ops.append_event, topic, value, now, retain)

    async def deliver_event(
        self, event: Event, now: datetime, *, after: int = 0, limit: int = 1000
    ) -> Delivery:
        return await self.writer.submit(ops.deliver_event, event, now, after, _limit(limit))

    async def emit_event(
        self, topic: str, value: bytes, now: datetime, retain: float | None, *, limit: int = 1000
    ) -> tuple[Event, Delivery]:
        return await self.writer.submit(ops.emit_event, topic, value, now, retain, _limit(limit))

    async def send_message(
        self, run_id: str, topic: str, value: bytes, now: datetime, key: str | None = None
    ) -> SendResult:
        return await self.writer.submit(ops.send_message, run_id, topic, value, now, key)

    async def prune_events(self, now: datetime) -> int:
        return await self.writer.submit(ops.prune_events, now)

    async def fire_timer(self, run_id: str, now: datetime, timeout: TimeoutValue) -> FireResult:
        return await self.writer.submit(ops.fire_timer, run_id, now, timeout)

    async def cancel(self, run_id: str, reason: str, now: datetime) -> CommitResult | None:
        return await self.writer.submit(ops.cancel, run_id, reason, now)

    async def rewind(self, run_id: str, step: str, now: datetime) -> RunRecord | None:
        return await self.writer.submit(ops.rewind, run_id, step, now)

    async def pause(self, run_id: str, now: datetime) -> RunRecord | None:
        return await self.writer.submit(ops.pause, run_id, now)

    async def resume(self, run_id: str, now: datetime) -> RunRecord | None:
        return await self.writer.submit(ops.resume, run_id, now)

    async def pause_workflow(self, workflow: str, paused: bool) -> bool:
        return await self.writer.submit(ops.pause_workflow, workflow, paused)

    async def acquire_slot(
        self, scope: str, holder: str, limit: int, now: datetime, expires_at: datetime
    ) -> bool:
        return await self.writer.submit(slots.acquire_slot, scope, holder, limit, now, expires_at)

    async def release_slot(self, scope: str, holder: str) -> None:
        await self.writer.submit(slots.release_slot, scope, holder)

    async def paused_counts(self) -> dict[str, int]:
        sql = "SELECT workflow, count(*) FROM runs WHERE paused = 1 GROUP BY workflow"
        return {w: n for w, n in await self._fetchall(sql, ())}

    async def paused_workflows(self) -> list[str]:
        return [r[0] for r in await self._fetchall(ops.SELECT_PAUSED_WORKFLOWS, ())]

    async def register_workflows(self, workflows: Sequence[WorkflowInfo], now: datetime) -> None:
        await self.writer.submit(ops.register_workflows, list(workflows), now)

    # -- reads (the reader's connection) --------------------------------------------------

    async def _fetchall(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        return list(await self.reader.execute_fetchall(sql, params))

    async def _point_read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        point = self._point
        if point is None:
            raise StoreError("the SQLite store is not open")
        try:
            return point.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc):
                raise
        return await self._fetchall(sql, params)

    async def get_run(self, run_id: str) -> RunRecord | None:
        rows = await self._point_read(ops.SELECT_RUN, (run_id,))
        return record_from_row(rows[0]) if rows else None

    async def get_checkpoints(self, run_id: str) -> list[Checkpoint]:
        rows = await self._point_read(ops.SELECT_CHECKPOINTS, (run_id,))
        return [ops.checkpoint_from_row(row) for row in rows]

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        page = await self._page_runs(workflow, status, parent_run_id, _limit(limit), None)
        return page.records

    async def page_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> Page:
        return await self._page_runs(workflow, status, None, _limit(limit), after)

    async def _page_runs(
        self,
        workflow: str | None,
        status: RunStatus | None,
        parent_run_id: str | None,
        limit: int,
        after: int | None,
    ) -> Page:
        where: list[str] = []
        params: list[Any] = []
        if workflow is not None:
            where.append("workflow = ?")
            params.append(workflow)
        if status is not None:
            where.append("status = ?")
            params.append(RunStatus(status).value)
        if parent_run_id is not None:
            where.append("parent_run_id = ?")
            params.append(parent_run_id)
        if after is not None:
            where.append("seq < ?")
            params.append(after)
        sql = f"SELECT seq, {_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(_limit(limit + 1))
        return _page(await self._fetchall(sql, tuple(params)), limit)

    async def runs_waiting_on(self, topic: str, limit: int = 1000) -> list[RunRecord]:
        return (await self.page_waiting(topic, limit=limit)).records

    async def page_waiting(
        self, topic: str, *, limit: int = 1000, after: int | None = None
    ) -> Page:
        limit = _limit(limit)
        params = (topic, after or 0, _limit(limit + 1))
        one = await self._fetchall(ops.WAITING_ONE, params)
        many = await self._fetchall(ops.WAITING_MANY, params)
        return _page(ops.merge_waiting(one, many, limit + 1), limit)

    async def due_timers(self, until: datetime, limit: int) -> list[tuple[datetime, str]]:
        rows = await self._fetchall(_DUE, (to_us(until), _limit(limit)))
        return [(from_us(at), run_id) for at, run_id in rows]

    async def runnable(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        us = to_us(now)
        return [(r, q) for r, q in await self._fetchall(_RUNNABLE, (us, us, _limit(limit)))]

    async def registered_workflows(self) -> list[WorkflowInfo]:
        return [ops.workflow_from_row(r) for r in await self._fetchall(ops.SELECT_WORKFLOWS, ())]

    # -- sessions (stemd._store.sessions) -------------------------------------------------

    async def put_session(self, session: SessionRecord) -> None:
        await self.writer.submit(sessions_ops.put_session, session, durable=False)

    async def renew_session(self, session: SessionRecord) -> bool:
        return await self.writer.submit(sessions_ops.renew_session, session, durable=False)

    async def sessions(self) -> list[SessionRecord]:
        rows = await self._fetchall(sessions_ops.SELECT_SESSIONS, ())
        return [sessions_ops.session_from_row(r) for r in rows]

    async def end_session(self, session_id: str, now: datetime) -> list[Released]:
        return await self.writer.submit(sessions_ops.end_session, session_id, now)

    # -- other processes ------------------------------------------------------------------

    async def external_changes(self) -> int:
        """A counter that moves whenever another connection (another process) has
        committed to the database since the previous call. Cheap: one pragma."""
        version = await self.writer.submit(ops.data_version, txn=False)
        if self._seen_version is not None and version != self._seen_version:
            self._changes += 1
        self._seen_version = version
        return self._changes
