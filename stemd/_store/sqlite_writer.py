"""The SQLite store's single writer: group commit of every worker's writes.

Callers submit write operations (plain functions of a :class:`sqlite3.Connection`); the
writer's thread takes whatever has queued up and applies the whole batch in one
``BEGIN IMMEDIATE`` transaction, so that the writes of many concurrent workers share one
commit and one fsync. Each caller is answered only after the transaction holding its
write has committed.

The writer is a thread, not a task: SQLite's calls block, so a batch must run off the
event loop anyway, and a thread that loops on its own queue costs one wake-up per batch
instead of a task plus a thread hop per batch (measured: docs/explanation/performance.md).
The store owns it: started in ``open()``, drained and joined in ``close()``.

An operation refuses (raises a :class:`~stemd._errors.StemError`, e.g. ``LeaseLost``) only
before it has written anything, so a refusal does not disturb the other operations of its
batch. Any other failure rolls the batch back and replays its operations one transaction
each, so that one bad request fails alone. A database locked by another process is waited
for (``busy_timeout``) and then retried until ``lock_timeout`` has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
import structlog

from stemd._errors import StemError, StoreError

if TYPE_CHECKING:
    from collections.abc import Callable

    from stemd._store.sqlite_cache import RowCache

__all__ = ["Writer", "WriterStats", "is_busy", "while_busy"]

log = structlog.get_logger("stemd.store.sqlite")

T = TypeVar("T")

_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` says that another connection holds the lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY
    text = str(exc)
    return "locked" in text or "busy" in text


def _log_for(exc: BaseException) -> Any:
    """``log.debug`` for a full disk (reported as an outage elsewhere), else ``log.warning``."""
    full = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL
    return log.debug if full else log.warning


def while_busy(
    fn: Callable[[], T], timeout: float, on_retry: Callable[[], None] | None = None
) -> T:
    """Call ``fn()`` (blocking), again and again while another connection holds the
    lock, pausing 1 ms doubling to 100 ms, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_busy(exc) or time.monotonic() + delay > deadline:
                raise
            if on_retry is not None:
                on_retry()
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


class WriterStats(msgspec.Struct, frozen=True, kw_only=True):
    """What the writer has done: transactions, requests, and the largest batch."""

    batches: int
    requests: int
    max_batch: int
    retries: int
    fallbacks: int


class _Request:
    __slots__ = ("args", "durable", "error", "fn", "future", "loop", "result", "txn", "undo")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        txn: bool,
        durable: bool,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any] | None,
        undo: Callable[..., Any] | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.txn = txn
        self.durable = durable
        self.loop = loop
        self.future = future
        self.undo = undo
        self.result: Any = None
        self.error: BaseException | None = None


class Writer:
    """The one thread that writes to the database.

    Args:
        db: the writer's connection, in autocommit mode (``isolation_level=None``) and
            usable from another thread (``check_same_thread=False``). Only this writer
            touches it once started.
        synchronous: the connection's ``PRAGMA synchronous`` (``FULL`` or ``NORMAL``).
        max_batch: most requests committed in one transaction.
        lock_timeout: seconds to keep retrying a database locked by another process.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        *,
        synchronous: str = "FULL",
        max_batch: int = 512,
        lock_timeout: float = 30.0,
    ) -> None:
        self.db = db
        self.synchronous = synchronous
        self._current_sync = synchronous
        self.max_batch = max_batch
        self.lock_timeout = lock_timeout
        self._queue: SimpleQueue[_Request | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="stemd-sqlite-writer", daemon=True)
        self._closed = False
        self._batches = 0
        self._requests = 0
        self._max_batch = 0
        self._retries = 0
        self._fallbacks = 0
        # The connection's cache of the run rows it wrote (sqlite_cache), if it has one.
        self.rows: RowCache | None = getattr(db, "rows", None)

    def statistics(self) -> WriterStats:
        return WriterStats(
            batches=self._batches,
            requests=self._requests,
            max_batch=self._max_batch,
            retries=self._retries,
            fallbacks=self._fallbacks,
        )

    def start(self) -> None:
        """Start the writer's thread."""
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the writer's thread is alive (it still owns the connection)."""
        return self._thread.is_alive()

    async def submit(
        self,
        fn: Callable[..., T],
        *args: Any,
        txn: bool = True,
        durable: bool = True,
        undo: Callable[[sqlite3.Connection, Any], object] | None = None,
    ) -> T:
        """Run ``fn(db, *args)`` in the next batch; return its result once committed.

        With ``txn=False`` the function runs outside any transaction (a cheap read of the
        writer's own connection, such as ``PRAGMA data_version``). With ``durable=False``
        a batch made only of such writes is committed without its own fsync (as with
        ``synchronous=NORMAL``): it becomes durable with the next fsynced commit, and a
        power loss can lose it only together with everything written after it.

        ``undo(db, result)``, if given, is written (in a later transaction, unawaited)
        when the caller is cancelled before a result other than ``None`` reached it: a
        claim whose claimant is gone gives its run back. (This costs nothing while the
        caller is not cancelled, unlike a shielding cancel scope around the wait.)
        """
        if self._closed:
            raise StoreError("the SQLite store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Request(fn, args, txn, durable, loop, future, undo))
        if undo is None:
            return await future
        try:
            return await future
        except BaseException:
            # Answered, but the caller was cancelled before it resumed: undo here.
            # (Cancelled before the answer: _deliver undoes it when it comes.)
            if future.done() and not future.cancelled() and future.exception() is None:
                self._undo(undo, future.result())
            raise

    def _undo(self, undo: Callable[..., object], result: object) -> None:
        """Queue ``undo(db, result)`` for a result its caller did not take, unawaited."""
        if result is None or self._closed:
            return  # closed: the run's lease (or its session's end) gives it back
        loop = asyncio.get_running_loop()
        self._queue.put(_Request(undo, (result,), True, False, loop, None))

    def _deliver(self, batch: list[_Request]) -> None:
        """Answer the callers of a committed batch (on their event loop)."""
        for request in batch:
            future = request.future
            if future is None:  # an undo: nobody waits for it
                continue
            if future.done():  # the caller was cancelled
                if request.undo is not None and request.error is None:
                    self._undo(request.undo, request.result)
                continue
            if request.error is not None:
                future.set_exception(request.error)
            else:
                future.set_result(request.result)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Take no more requests, let the thread commit the queued ones, and join it."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        if self._thread.is_alive():
            with anyio.move_on_after(timeout, shield=True):
                await anyio.to_thread.run_sync(self._thread.join)
            if self._thread.is_alive():  # pragma: no cover - a disk stuck for `timeout`
                log.error("the SQLite writer did not finish in time; leaving it behind")

    def _loop(self) -> None:
        queue = self._queue
        running = True
        while running:
            first = queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    request = queue.get_nowait()
                except Empty:
                    break
                if request is None:
                    running = False
                    break
                batch.append(request)
            try:
                self._execute(batch)
            except BaseException as exc:  # pragma: no cover - a bug in the writer itself
                for request in batch:
                    request.error = StoreError(f"SQLite writer failed: {exc!r}")
            self._answer(batch)

    def _answer(self, batch: list[_Request]) -> None:
        """Hand the answers of a batch to their callers' event loops, one call each."""
        loop = batch[0].loop
        if all(request.loop is loop for request in batch):  # one loop: the usual case
            by_loop = {loop: batch}
        else:
            by_loop = {}
            for request in batch:
                by_loop.setdefault(request.loop, []).append(request)
        for loop, requests in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, requests)

    # -- in the writer's thread -----------------------------------------------------------

    def _execute(self, batch: list[_Request]) -> None:
        self._batches += 1
        self._requests += len(batch)
        self._max_batch = max(self._max_batch, len(batch))
        outside = [r for r in batch if not r.txn]
        for request in outside:
            self._run_alone(request, txn=False)
        inside = [r for r in batch if r.txn] if outside else batch
        if not inside:
            return
        if self.synchronous == "FULL":
            self._sync("FULL" if any(r.durable for r in inside) else "NORMAL")
        try:
            self._with_lock(self._apply_all, inside)
        except Exception as exc:
            if is_busy(exc):
                for request in inside:
                    request.error = StoreError(f"SQLite database is locked: {exc}")
                return
            # Something unexpected: replay each request in a transaction of its own, so
            # that only the culprit fails.
            self._fallbacks += 1
            # A full disk fails every batch until freed: that is logged once, as degraded.
            _log_for(exc)("batch failed; replaying its requests one by one", error=repr(exc))
            for request in inside:
                self._run_alone(request, txn=True)

    def _sync(self, level: str) -> None:
        if level != self._current_sync:
            self.db.execute(f"PRAGMA synchronous = {level}")
            self._current_sync = level

    def _apply_all(self, batch: list[_Request]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            if self.rows is not None:
                self.rows.begin(db, [request.fn for request in batch])
            for request in batch:
                try:
                    request.result = request.fn(db, *request.args)
                    request.error = None
                except StemError as exc:
                    # A refusal (LeaseLost...): raised before the operation wrote anything.
                    request.result = None
                    request.error = exc
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _run_alone(self, request: _Request, *, txn: bool) -> None:
        def apply(_: object) -> None:
            db = self.db
            if not txn:
                request.result = request.fn(db, *request.args)
                return
            db.execute("BEGIN IMMEDIATE")
            try:
                if self.rows is not None:
                    self.rows.begin(db, [request.fn])
                request.result = request.fn(db, *request.args)
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

        try:
            self._with_lock(apply, None)
            request.error = None
        except StemError as exc:
            request.error = exc
        except Exception as exc:
            request.error = StoreError(f"SQLite write failed: {exc!r}")
            request.error.__cause__ = exc

    def _with_lock(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Call ``fn(arg)``, retrying while another process holds the database lock."""
        while_busy(lambda: fn(arg), self.lock_timeout, self._count_retry)

    def _count_retry(self) -> None:
        self._retries += 1

    def _rollback(self) -> None:
        if self.rows is not None:
            self.rows.clear()
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error as exc:  # pragma: no cover - the connection is gone
                log.error("rollback failed", error=repr(exc))
