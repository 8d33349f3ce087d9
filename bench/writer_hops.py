"""How to hand SQLite work to a thread: the cost of one write transaction each way.

    python bench/writer_hops.py [--n 3000]

One "write" is the shape of a checkpoint save: BEGIN IMMEDIATE, a conditional UPDATE, an
upsert, COMMIT (synchronous=NORMAL, so that the hand-off and not the fsync is measured).
Each is run sequentially (the latency a single worker sees):

- ``aiosqlite, one await per statement``: four hops to aiosqlite's thread;
- ``aiosqlite-style thread, one call per write``: stemd's writer thread (the whole
  transaction is one function, one hop);
- ``asyncio.to_thread per write`` and ``anyio.to_thread.run_sync per write``;
- ``inline``: on the event loop's thread (no hop; blocks the loop).

Prints the median microseconds per write.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiosqlite
import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from typing import TYPE_CHECKING

from stemd._store.sqlite_writer import Writer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

SCHEMA = (
    "CREATE TABLE runs (run_id TEXT PRIMARY KEY, token INTEGER, updated_at INTEGER);"
    "CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, run_id TEXT, name TEXT, value BLOB,"
    " UNIQUE (run_id, name));"
    "INSERT INTO runs VALUES ('r', 1, 0);"
)
TOUCH = "UPDATE runs SET updated_at = ? WHERE run_id = 'r' AND token = 1"
UPSERT = (
    "INSERT INTO checkpoints (run_id, name, value) VALUES ('r', ?, x'31')"
    " ON CONFLICT (run_id, name) DO UPDATE SET value = excluded.value"
)


def write(db: sqlite3.Connection, i: int) -> None:
    """One write transaction, whole."""
    db.execute("BEGIN IMMEDIATE")
    db.execute(TOUCH, (i,))
    db.execute(UPSERT, (f"s{i % 100}",))
    db.execute("COMMIT")


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db


async def timed(n: int, fn: Callable[[int], Awaitable[None]]) -> float:
    samples = []
    for i in range(n):
        started = time.perf_counter()
        await fn(i)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


async def main(n: int) -> None:
    path = Path(tempfile.mkdtemp(prefix="stemd-hops-")) / "hops.db"
    setup = connect(path)
    setup.executescript(SCHEMA)
    setup.close()

    adb = await aiosqlite.connect(path, isolation_level=None)
    await adb.execute("PRAGMA synchronous = NORMAL")

    async def per_statement(i: int) -> None:
        await adb.execute("BEGIN IMMEDIATE")
        await adb.execute(TOUCH, (i,))
        await adb.execute(UPSERT, (f"s{i % 100}",))
        await adb.execute("COMMIT")

    results = {"aiosqlite, one await per statement": await timed(n, per_statement)}
    await adb.close()

    db = connect(path)
    writer = Writer(db, synchronous="NORMAL")
    writer.start()

    async def via_writer(i: int) -> None:
        await writer.submit(lambda conn: write(conn, i), txn=False)

    results["stemd writer thread, one call per write"] = await timed(n, via_writer)
    await writer.aclose()

    async def via_asyncio(i: int) -> None:
        await asyncio.to_thread(write, db, i)

    async def via_anyio(i: int) -> None:
        await anyio.to_thread.run_sync(write, db, i)

    async def inline(i: int) -> None:
        write(db, i)

    results["asyncio.to_thread per write"] = await timed(n, via_asyncio)
    results["anyio.to_thread.run_sync per write"] = await timed(n, via_anyio)
    results["inline on the event loop (blocks it)"] = await timed(n, inline)
    db.close()
    for name, micros in results.items():
        print(f"{name:<42} {micros:7.1f} µs per write (median of {n})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    anyio.run(main, parser.parse_args().n)
