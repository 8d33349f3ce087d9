"""The SQLite store beyond the contract suite: its URL, schema, group commit, locking,
several processes on one file, and the queries' indexes."""

from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._errors import ConfigError, LeaseLost, StoreError
from stemd._model import RunStatus
from stemd._store import sqlite_events, store_from_url
from stemd._store import sqlite_ops as ops
from stemd._store.base import Checkpoint, Complete, RunRecord, Suspend
from stemd._store.sqlite import _COLS, _DUE, _RUNNABLE, SqliteStore
from stemd._store.sqlite_schema import migrations, to_us
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def record(run_id: str, **changes: Any) -> RunRecord:
    """A pending run record, with ``changes`` applied."""
    fields: dict[str, Any] = {
        "run_id": run_id,
        "workflow": "w",
        "status": RunStatus.PENDING,
        "params": b"null",
        "created_at": NOW,
        "updated_at": NOW,
    }
    fields.update(changes)
    return RunRecord(**fields)


@asynccontextmanager
async def opened(path: Path, **options: Any) -> AsyncIterator[SqliteStore]:
    """An opened SQLite store on ``path``, closed on exit."""
    store = SqliteStore(path, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def pragma(store: SqliteStore, name: str) -> Any:
    """The value of the SQLite pragma ``name`` on the store's connection."""

    def read(db: sqlite3.Connection) -> Any:
        return db.execute(f"PRAGMA {name}").fetchone()[0]

    return await store.writer.submit(read, txn=False)


# -- URL and options ---------------------------------------------------------------------


def test_url_gives_path_and_options() -> None:
    """sqlite:///PATH is relative, sqlite:////PATH absolute; query and keywords set options."""
    rel = SqliteStore.from_url("sqlite:///./data/x.db?synchronous=normal&busy_timeout=2")
    assert rel.path == Path("./data/x.db")
    assert rel.synchronous == "NORMAL"
    assert rel.busy_timeout == 2.0
    absolute = SqliteStore.from_url("sqlite:////var/lib/stemd/x.db?synchronous=NORMAL")
    assert absolute.path == Path("/var/lib/stemd/x.db")
    keyword = store_from_url("sqlite:////tmp/x.db?synchronous=NORMAL", synchronous="FULL")
    assert isinstance(keyword, SqliteStore)
    assert keyword.synchronous == "FULL"
    assert SqliteStore.from_url("sqlite:////tmp/x.db").synchronous == "FULL"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////tmp/x.db?synchronous=OFF",
        "sqlite:////tmp/x.db?colour=blue",
        "sqlite:////tmp/x.db?busy_timeout=soon",
        "sqlite:///",
        "sqlite://relative.db",
    ],
)
def test_bad_url_is_a_config_error(url: str) -> None:
    """An unknown option, a bad value or a missing path is refused before anything opens."""
    with pytest.raises(ConfigError):
        SqliteStore.from_url(url)


async def test_open_sets_wal_and_synchronous(tmp_path: Path) -> None:
    """The database is in WAL mode; synchronous is FULL by default, NORMAL on request."""
    async with opened(tmp_path / "full.db") as store:
        assert str(await pragma(store, "journal_mode")).lower() == "wal"
        assert await pragma(store, "synchronous") == 2
    async with opened(tmp_path / "normal.db", synchronous="NORMAL") as store:
        assert await pragma(store, "synchronous") == 1


async def test_unopenable_path_is_a_store_error(tmp_path: Path) -> None:
    """A database in a missing directory fails to open with a StoreError naming it."""
    store = SqliteStore(tmp_path / "missing" / "x.db")
    with pytest.raises(StoreError, match="missing"):
        await store.open()


# -- schema ------------------------------------------------------------------------------


async def test_migrations_are_applied_once(tmp_path: Path) -> None:
    """Stores opening one new file at once all open it (the switch to WAL mode waits for
    the others' locks) and apply each migration exactly once; 50 new files, as a race
    lost on one in ten of them."""
    for round_ in range(50):
        path = tmp_path / f"x{round_}.db"
        stores = [SqliteStore(path) for _ in range(4)]
        async with anyio.create_task_group() as tg:
            for store in stores:
                tg.start_soon(store.open)
        for store in stores:
            await store.close()
        db = sqlite3.connect(path)
        versions = [v for (v,) in db.execute("SELECT version FROM schema_version")]
        assert versions == list(range(1, len(versions) + 1))
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        db.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database written by a newer stemd is not opened (nor changed)."""
    path = tmp_path / "x.db"
    async with opened(path):
        pass
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_version VALUES (999, '0999_future.sql', 0)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        await SqliteStore(path).open()


async def test_checkpoints_written_before_0003_read_without_a_time(tmp_path: Path) -> None:
    """A database at schema 2 is migrated: its checkpoints read back with ``at`` None,
    and checkpoints written after the migration carry their time."""
    path = tmp_path / "x.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE schema_version"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    for version, name, script in migrations()[:2]:
        db.executescript(script)
        db.execute("INSERT INTO schema_version VALUES (?, ?, 0)", (version, name))
    db.execute(
        "INSERT INTO runs (run_id, workflow, status, params, created_at, updated_at, queue,"
        " token) VALUES ('r1', 'w', 'pending', x'6e756c6c', ?, ?, 'workflow', 1)",
        (to_us(NOW), to_us(NOW)),
    )
    db.execute("INSERT INTO checkpoints (run_id, name, value) VALUES ('r1', 'old', x'31')")
    db.close()
    async with opened(path) as store:
        claim = await store.claim("r1", "w1", NOW, 30)
        assert claim is not None
        assert claim.checkpoints == [Checkpoint("old", b"1", None)]
        later = NOW + timedelta(seconds=5)
        await store.save_checkpoint("r1", claim.token, Checkpoint("new", b"2"), later)
        assert await store.get_checkpoints("r1") == [
            Checkpoint("old", b"1", None),
            Checkpoint("new", b"2", later),
        ]


async def test_a_run_waiting_before_0005_takes_events_after_it(tmp_path: Path) -> None:
    """A database at schema 4 with a run suspended on an event is migrated: the run is
    still listed as waiting, an emit resumes it, and events and messages are kept after."""
    path = tmp_path / "x.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE schema_version"
        " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)"
    )
    for version, name, script in migrations()[:4]:
        db.executescript(script)
        db.execute("INSERT INTO schema_version VALUES (?, ?, 0)", (version, name))
    db.execute(
        "INSERT INTO runs (run_id, workflow, status, params, created_at, updated_at, queue,"
        " token, wait_topic, wait_key, suspended_at) VALUES ('r1', 'w', 'suspended',"
        " x'6e756c6c', ?, ?, 'workflow', 1, 't.old', 'w@event#0', ?)",
        (to_us(NOW), to_us(NOW), to_us(NOW)),
    )
    db.close()
    async with opened(path) as store:
        [rec] = await store.runs_waiting_on("t.old")
        assert (rec.event_floor, rec.cursors, rec.wait_topics) == (0, {}, None)
        event, done = await store.emit_event("t.old", b'{"e":1}', NOW, 60)
        assert (event.seq, done.resumed) == (1, ["r1"])
        assert (await store.get_checkpoints("r1"))[0].value == b'{"e":1}'
        sent = await store.send_message("r1", "t.old", b'{"e":2}', NOW, "k")
        assert (sent.outcome, sent.resumed) == ("accepted", False)


async def test_runs_survive_a_reopen(tmp_path: Path) -> None:
    """What one store instance committed, the next one on the file reads back."""
    path = tmp_path / "x.db"
    async with opened(path) as store:
        await store.create_run(record("r1", params=b'{"a":1}'))
        claim = await store.claim("r1", "w1", NOW, 30)
        assert claim is not None
        await store.save_checkpoint("r1", claim.token, Checkpoint("s", b"1"), NOW)
    async with opened(path) as store:
        rec = await store.get_run("r1")
        assert rec is not None
        assert rec.status is RunStatus.RUNNING
        assert rec.params == b'{"a":1}'
        assert await store.get_checkpoints("r1") == [Checkpoint("s", b"1", NOW)]


# -- the writer --------------------------------------------------------------------------


@asynccontextmanager
async def writer_held(store: SqliteStore) -> AsyncIterator[threading.Event]:
    """Hold the writer's thread in a request until the yielded event is set, so that the
    requests submitted meanwhile are committed together in the next batch."""
    entered = threading.Event()
    gate = threading.Event()

    def hold(db: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: store.writer.submit(hold))
        await anyio.to_thread.run_sync(entered.wait, 10)
        try:
            yield gate
        finally:
            gate.set()


async def test_concurrent_writes_share_one_commit(tmp_path: Path) -> None:
    """Writes submitted while the writer is busy are committed in one transaction."""
    async with opened(tmp_path / "x.db") as store:
        async with writer_held(store) as gate:
            before = store.statistics().batches
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(store.create_run, record(f"r{i}"))
                await wait_until(lambda: _queued(store, 100), what="100 queued writes")
                gate.set()
        stats = store.statistics()
        assert stats.batches == before + 1  # all 100 in the batch after the held one
        assert stats.max_batch == 100
        assert len(await store.list_runs(limit=1000)) == 100


async def _queued(store: SqliteStore, n: int) -> bool:
    return store.writer._queue.qsize() >= n


async def test_a_refused_write_does_not_fail_its_batch(tmp_path: Path) -> None:
    """A stale token's write in a batch is refused while the others of the batch commit."""
    async with opened(tmp_path / "x.db") as store:
        await store.create_run(record("r1"))
        claim = await store.claim("r1", "w1", NOW, 30)
        assert claim is not None
        results: dict[str, Any] = {}

        async def attempt(name: str, token: int) -> None:
            try:
                await store.save_checkpoint("r1", token, Checkpoint(name, b"1"), NOW)
                results[name] = "ok"
            except LeaseLost:
                results[name] = "lost"

        async with writer_held(store) as gate, anyio.create_task_group() as tg:
            tg.start_soon(attempt, "stale", claim.token - 1)
            tg.start_soon(attempt, "good", claim.token)
            tg.start_soon(store.create_run, record("r2"))
            await wait_until(lambda: _queued(store, 3), what="3 queued writes")
            gate.set()
        assert results == {"stale": "lost", "good": "ok"}
        assert await store.get_checkpoints("r1") == [Checkpoint("good", b"1", NOW)]
        assert await store.get_run("r2") is not None
        assert store.statistics().fallbacks == 0


async def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    """An unexpected error in one request rolls its batch back and replays the others."""

    def broken(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO checkpoints (run_id, name, value) VALUES ('x', 'y', NULL)")

    async with opened(tmp_path / "x.db") as store:
        outcome: dict[str, BaseException] = {}

        async def submit_broken() -> None:
            try:
                await store.writer.submit(broken)
            except StoreError as exc:
                outcome["broken"] = exc

        async with writer_held(store) as gate, anyio.create_task_group() as tg:
            tg.start_soon(store.create_run, record("before"))
            tg.start_soon(submit_broken)
            tg.start_soon(store.create_run, record("after"))
            await wait_until(lambda: _queued(store, 3), what="3 queued writes")
            gate.set()
        assert "broken" in outcome
        assert await store.get_run("before") is not None
        assert await store.get_run("after") is not None
        assert store.statistics().fallbacks == 1


async def test_close_commits_queued_writes_then_refuses(tmp_path: Path) -> None:
    """Closing waits for the writes already submitted; later writes are refused."""
    path = tmp_path / "x.db"
    store = SqliteStore(path)
    await store.open()
    submitted = 0

    async def create(i: int) -> None:
        nonlocal submitted
        submitted += 1  # counted before the request is queued: no await in between
        await store.create_run(record(f"r{i}"))

    async with anyio.create_task_group() as tg:
        for i in range(50):
            tg.start_soon(create, i)
        await wait_until(lambda: _true(submitted == 50), what="50 submitted writes")
        await store.close()
    with pytest.raises(StoreError):
        await store.create_run(record("late"))
    async with opened(path) as again:
        assert len(await again.list_runs(limit=100)) == 50


# -- other processes ---------------------------------------------------------------------


async def test_two_stores_never_both_claim_a_run(tmp_path: Path) -> None:
    """Two stores on one file (two processes) racing to claim: each run has one owner."""
    path = tmp_path / "x.db"
    async with opened(path) as a, opened(path) as b:
        for i in range(100):
            await a.create_run(record(f"r{i}"))
        winners: dict[str, list[str]] = {}

        async def take(store: SqliteStore, owner: str, run_id: str) -> None:
            if await store.claim(run_id, owner, NOW, 30) is not None:
                winners.setdefault(run_id, []).append(owner)

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(take, a, "a", f"r{i}")
                tg.start_soon(take, b, "b", f"r{i}")
        assert sorted(winners) == sorted(f"r{i}" for i in range(100))
        assert all(len(owners) == 1 for owners in winners.values())


async def test_waits_out_a_lock_held_elsewhere_and_reads_meanwhile(tmp_path: Path) -> None:
    """While another connection holds the write lock, writes wait and retry, reads answer;
    the write commits once the lock is released."""
    path = tmp_path / "x.db"
    async with opened(path, busy_timeout=0.01) as store:
        await store.create_run(record("existing"))
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.create_run, record("blocked"))
                await wait_until(lambda: _true(store.statistics().retries > 0), what="a busy retry")
                assert await store.get_run("existing") is not None
                assert await store.get_run("blocked") is None
                other.execute("ROLLBACK")
        finally:
            other.close()
        assert await store.get_run("blocked") is not None


async def _true(value: bool) -> bool:
    return value


async def test_a_lock_held_too_long_is_a_store_error(tmp_path: Path) -> None:
    """A write that cannot get the lock within lock_timeout fails with a StoreError, and
    the store works again once the lock is free."""
    path = tmp_path / "x.db"
    async with opened(path, busy_timeout=0.01, lock_timeout=0.2) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="locked"):
            await store.create_run(record("r1"))
        other.execute("ROLLBACK")
        other.close()
        assert (await store.create_run(record("r1")))[1] is True


async def test_external_changes_move_only_for_other_writers(tmp_path: Path) -> None:
    """The change counter ignores the store's own commits and moves on another's."""
    path = tmp_path / "x.db"
    async with opened(path) as a, opened(path) as b:
        first = await a.external_changes()
        await a.create_run(record("mine"))
        assert await a.external_changes() == first
        await b.create_run(record("theirs"))
        assert await a.external_changes() != first


flow = stemd.Flow("sqlite.flow")


@flow.step("one")
async def one(ctx: stemd.FlowContext) -> int:
    """Returns 1."""
    return 1


@flow.step("two")
async def two(ctx: stemd.FlowContext) -> str:
    """Waits for ``sqlite.go``; returns the previous result and the payload."""
    payload = await ctx.wait_for_event("sqlite.go")
    return f"{ctx.previous_result}+{payload}"


async def test_a_daemon_starts_runs_of_another_process_promptly(tmp_path: Path) -> None:
    """A client App (workers=False) on the daemon's file starts and resumes a run; the
    daemon sees both within a fraction of a second, well before its periodic sweep."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    async with (
        stemd.App(
            store=url,
            workflows=[flow],
            options=stemd.AppOptions(timing=stemd.Timing(sweep_interval=3600)),
        ) as daemon,
        stemd.App(store=url, workflows=[flow], workers=False) as client,
    ):
        run_id = await client.start_workflow("sqlite.flow")
        with anyio.fail_after(5):
            while not await client.runs_waiting_on("sqlite.go"):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert await client.emit("sqlite.go", "go") == 1
        result = await client.wait_for_completion(run_id, timeout=5)
        assert result.value == "1+go"
        assert daemon.sweeper is not None
        assert daemon.sweeper.statistics().external >= 2


# -- indexes -----------------------------------------------------------------------------


async def test_queries_use_indexes(tmp_path: Path) -> None:
    """Every listing and lookup is an index search: none scans the runs table."""
    path = tmp_path / "x.db"
    async with opened(path):
        pass
    queries = {
        "by status": (f"SELECT {_COLS} FROM runs WHERE status = ? ORDER BY seq DESC LIMIT ?"),
        "by workflow": f"SELECT {_COLS} FROM runs WHERE workflow = ? ORDER BY seq DESC LIMIT ?",
        "by both": (
            f"SELECT {_COLS} FROM runs WHERE workflow = ? AND status = ? ORDER BY seq DESC LIMIT ?"
        ),
        "by parent": (
            f"SELECT {_COLS} FROM runs WHERE parent_run_id = ? ORDER BY seq DESC LIMIT ?"
        ),
        "runnable": _RUNNABLE,
        "due timers": _DUE,
        "waiting on topic": ops.WAITING_ONE,
        "waiting on topics": ops.WAITING_MANY,
        "next kept event": sqlite_events._NEXT_KEPT,
        "next message": sqlite_events._NEXT_MESSAGE.format("?, ?"),
        "waiting on child": ops._WAITING_ON_CHILD,
        "any child wait": ops._ANY_CHILD_WAIT,
        "run": ops.SELECT_RUN,
        "checkpoints": ops.SELECT_CHECKPOINTS,
    }
    db = sqlite3.connect(path)
    for what, sql in queries.items():
        numbered = [int(n) for n in re.findall(r"\?(\d+)", sql)]
        params = (1,) * (max(numbered) if numbered else sql.count("?"))
        plan = " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))
        assert "INDEX" in plan or "PRIMARY KEY" in plan, f"{what}: {plan}"
        # Sorting is only ever of one run's few rows.
        one_run = ("checkpoints", "waiting on child", "next message")
        assert "TEMP B-TREE" not in plan or what in one_run, plan
    db.close()


async def test_commit_and_wake_through_sqlite(tmp_path: Path) -> None:
    """A completed child wakes its waiting parent in the same SQLite transaction."""
    async with opened(tmp_path / "x.db") as store:
        await store.create_run(record("parent"))
        await store.create_run(record("child", parent_run_id="parent"))
        parent = await store.claim("parent", "w", NOW, 30)
        assert parent is not None
        await store.commit("parent", parent.token, Suspend(wait_child="child"), NOW)
        child = await store.claim("child", "w", NOW, 30)
        assert child is not None
        later = NOW + timedelta(seconds=1)
        result = await store.commit("child", child.token, Complete(result=b"1"), later)
        assert result.woken == ("parent",)
        rec = await store.get_run("parent")
        assert rec is not None
        assert rec.status is RunStatus.PENDING


def _sync_level(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA synchronous").fetchone()[0])


async def test_only_claim_and_renewal_batches_skip_the_fsync(tmp_path: Path) -> None:
    """With synchronous=FULL, a batch holding any durable write commits with FULL; only a
    batch of claims and lease renewals alone commits without its own fsync."""
    async with opened(tmp_path / "x.db") as store:
        writer = store.writer
        assert await writer.submit(_sync_level, durable=False) == 1
        assert await writer.submit(_sync_level) == 2
        async with writer_held(store) as gate, anyio.create_task_group() as tg:
            levels: list[int] = []

            async def level(durable: bool) -> None:
                levels.append(await writer.submit(_sync_level, durable=durable))

            tg.start_soon(level, False)
            tg.start_soon(level, True)
            await wait_until(lambda: _queued(store, 2), what="2 queued writes")
            gate.set()
        assert levels == [2, 2]
    async with opened(tmp_path / "n.db", synchronous="NORMAL") as store:
        assert await store.writer.submit(_sync_level) == 1
