"""Where the floor is: a 3-step workflow's writes made without the engine, layer by layer.

    python bench/floor.py                      # SQLite (fsync on), then the KV store
    python bench/floor.py --only sqlite --runs 10000 --latency-runs 1000
    python bench/floor.py --only kv --runs 3000

A 3-step workflow costs five store writes (create, claim, two checkpoints, the commit
with the last step's result). Each layer below does that much, from ``--concurrency``
tasks at once (throughput: workflows/s and the process's CPU per workflow) and one at a
time (latency: p50 and p99 of the five writes in a row):

SQLite (``synchronous=FULL``, WAL, a fresh file each):

- ``engine``: the App running the 3-step flow (what bench/embedded.py measures);
- ``store``: the five writes as ``SqliteStore`` calls (create_run, claim,
  save_checkpoint twice, commit): the writer thread, its row codec and cache, the SQL;
- ``hops``: five hand-offs to the writer thread of a function doing nothing (no
  transaction): what handing work to the thread and back costs;
- ``sql``: the store's own SQL functions called on the event loop's thread, one
  transaction each, fsynced but the claim's, as the writer does (no hand-off, no group
  commit: what writing on the loop's thread would cost, and the latency floor of five
  writes with four fsyncs).

KV (one nats-server with JetStream on a free loopback port, a temp store dir; the figures
are this process's CPU, nats-server's is printed beside it):

- ``store``: the five writes as ``JetStreamStore`` calls (seven stream writes: the run's
  document and its index entries);
- ``broker``: the daemon's side of a workflow without the engine: the five writes, and
  between the create and the claim the run's task through the JetStream broker
  (published, pulled, acknowledged);
- ``claimed``: the writes of a run the daemon creates already claimed and hands to a
  waiting worker (the hand-off, what a daemon with idle workers does): four
  ``JetStreamStore`` calls, five stream writes (the create's index entry and document,
  two checkpoints, the commit);
- ``publish``: seven acknowledged publishes to a stream through stemd's NATS connection;
- ``nats-py``: seven acknowledged publishes through nats-py's JetStream context;
- ``pair`` and ``atomic``: a create's two writes (an index entry fenced on another key,
  then the document if absent), as two acknowledged publishes in a row (``pair``) or as
  one JetStream atomic batch, one acknowledgement for both (``atomic``; nats-server
  2.12+, ``allow_atomic`` on the stream).

Prints one line per layer and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

# Keep bench/ itself off the path (bench/nats.py would shadow nats-py), the root on it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stemd  # noqa: E402
from bench.daemons import cpu_seconds  # noqa: E402
from bench.workflows import three_steps  # noqa: E402
from stemd._model import RunStatus  # noqa: E402
from stemd._store import sqlite_ops as ops  # noqa: E402
from stemd._store.base import Checkpoint, Complete, RunRecord, Store, compute_timer_at  # noqa: E402
from stemd._store.sqlite import SqliteStore  # noqa: E402
from stemd._store.transitions import apply_claim  # noqa: E402

Workflow = Callable[[int], Awaitable[None]]
LEASE = 30.0
VALUE = b'{"v":1}'


def _record(run_id: str, now: datetime) -> RunRecord:
    rec = RunRecord(
        run_id=run_id,
        workflow="bench.flow",
        status=RunStatus.PENDING,
        params=b"{}",
        created_at=now,
        updated_at=now,
    )
    rec.timer_at = compute_timer_at(rec)
    return rec


async def _steps(store: Store, run_id: str, token: int) -> None:
    """The writes of a claimed run's three steps: two checkpoints, the commit."""
    for step in ("one", "two"):
        cp = Checkpoint(name=step, value=VALUE)
        await store.save_checkpoint(run_id, token, cp, datetime.now(UTC))
    done = Complete(result=VALUE, checkpoints=(Checkpoint(name="three", value=VALUE),))
    await store.commit(run_id, token, done, datetime.now(UTC))


def store_workflow(store: Store, prefix: str) -> Workflow:
    """The five writes of one 3-step workflow, as store calls."""

    async def one(i: int) -> None:
        run_id = f"{prefix}{i}"
        now = datetime.now(UTC)
        await store.create_run(_record(run_id, now))
        claim = await store.claim(run_id, "floor", datetime.now(UTC), LEASE)
        assert claim is not None
        token = claim.token
        await _steps(store, run_id, token)

    return one


async def measure(workflow: Workflow, runs: int, concurrency: int) -> dict[str, Any]:
    """``runs`` workflows from ``concurrency`` tasks: workflows/s and CPU µs per workflow."""
    todo = iter(range(runs))

    async def worker() -> None:
        for i in todo:
            await workflow(i)

    cpu = time.process_time()
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return {
        "workflows_per_s": round(runs / elapsed, 1),
        "cpu_us_per_workflow": round(1e6 * cpu / runs, 1),
    }


async def latency(workflow: Workflow, runs: int, first: int) -> dict[str, Any]:
    """``runs`` workflows one at a time: p50 and p99 in ms."""
    samples = []
    for i in range(first, first + runs):
        t0 = time.perf_counter()
        await workflow(i)
        samples.append(time.perf_counter() - t0)
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1000, 3), "p99_ms": round(q[98] * 1000, 3)}


async def both(make: Callable[[str], Workflow], args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then throughput and latency; ``make(prefix)`` is the workflow, its run
    ids starting with ``prefix`` (each measurement its own: warm-up, the rest)."""
    await measure(make("w"), args.warmup, args.concurrency)
    row = await measure(make("r"), args.runs, args.concurrency)
    if args.latency_runs:
        row.update(await latency(make("r"), args.latency_runs, args.runs))
    return row


# -- SQLite -------------------------------------------------------------------------------


async def sqlite_engine(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    url = f"sqlite:///{path}?synchronous=FULL"
    async with stemd.App(store=url, workflows=[three_steps], concurrency=args.workers) as app:

        async def one(i: int) -> None:
            run_id = await app.start_workflow(three_steps)
            await app.wait_for_completion(run_id, timeout=30)

        return await both(lambda _: one, args)


async def store_layer(store: Store, args: argparse.Namespace) -> dict[str, Any]:
    """The five writes as calls of ``store`` (opened here, and closed)."""
    await store.open()
    try:
        return await both(lambda prefix: store_workflow(store, prefix), args)
    finally:
        await store.close()


async def sqlite_store(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    return await store_layer(SqliteStore(path, synchronous="FULL"), args)


def _nothing(db: sqlite3.Connection) -> None:
    return None


async def sqlite_hops(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    store = SqliteStore(path, synchronous="FULL")
    await store.open()
    try:
        writer = store.writer

        async def one(i: int) -> None:
            for _ in range(5):
                await writer.submit(_nothing, txn=False)

        return await both(lambda _: one, args)
    finally:
        await store.close()


async def sqlite_inline(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The store's SQL functions on the loop's thread, one transaction each."""
    store = SqliteStore(path, synchronous="FULL")
    await store.open()  # the schema
    await store.close()
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")

    def txn(fn: Callable[..., Any], *a: Any, durable: bool = True) -> Any:
        if not durable:  # as the writer does: a claim is not fsynced on its own
            db.execute("PRAGMA synchronous=NORMAL")
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db, *a)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if not durable:
            db.execute("PRAGMA synchronous=FULL")
        return result

    def make(prefix: str) -> Workflow:
        async def one(i: int) -> None:
            run_id = f"{prefix}{i}"
            txn(ops.create_run, _record(run_id, datetime.now(UTC)))
            claim = txn(ops.claim, run_id, "floor", datetime.now(UTC), LEASE, durable=False)
            token = claim.token
            for step in ("one", "two"):
                cp = Checkpoint(name=step, value=VALUE)
                txn(ops.save_checkpoint, run_id, token, cp, datetime.now(UTC))
            done = Complete(result=VALUE, checkpoints=(Checkpoint(name="three", value=VALUE),))
            txn(ops.commit, run_id, token, done, datetime.now(UTC))
            await anyio.lowlevel.checkpoint()

        return one

    try:
        return await both(make, args)
    finally:
        db.close()


SQLITE = {
    "engine": sqlite_engine,
    "store": sqlite_store,
    "hops": sqlite_hops,
    "sql": sqlite_inline,
}


# -- KV -------------------------------------------------------------------------------


async def kv_store(url: str, args: argparse.Namespace) -> dict[str, Any]:
    from stemd._store.jetstream import JetStreamStore

    return await store_layer(JetStreamStore(url, bucket="floor"), args)


async def kv_broker(url: str, args: argparse.Namespace) -> dict[str, Any]:
    from stemd._broker.jetstream import JetStreamBroker
    from stemd._store.jetstream import JetStreamStore

    store = JetStreamStore(url, bucket="floor")
    broker = JetStreamBroker(url)
    await store.open()
    await broker.open()

    def make(prefix: str) -> Workflow:
        async def one(i: int) -> None:
            run_id = f"{prefix}{i}"
            await store.create_run(_record(run_id, datetime.now(UTC)))
            await broker.enqueue(run_id, "default", key=f"{run_id}:0")
            delivery = await broker.receive("default")
            claim = await store.claim(delivery.run_id, "floor", datetime.now(UTC), LEASE)
            assert claim is not None
            token, run_id = claim.token, delivery.run_id
            await _steps(store, run_id, token)
            await delivery.ack()

        return one

    try:
        return await both(make, args)
    finally:
        await broker.close()
        await store.close()


def claimed_workflow(store: Store, prefix: str) -> Workflow:
    """The writes of a run created claimed (the hand-off), as store calls."""

    async def one(i: int) -> None:
        run_id = f"{prefix}{i}"
        now = datetime.now(UTC)
        record = apply_claim(_record(run_id, now), "floor", now, LEASE)
        stored, created = await store.create_run(record)
        assert created
        token = stored.token
        await _steps(store, run_id, token)

    return one


async def kv_claimed(url: str, args: argparse.Namespace) -> dict[str, Any]:
    from stemd._store.jetstream import JetStreamStore

    store = JetStreamStore(url, bucket="floor")
    await store.open()
    try:
        return await both(lambda prefix: claimed_workflow(store, prefix), args)
    finally:
        await store.close()


_FENCE = {
    "Nats-Expected-Last-Subject-Sequence": "0",
    "Nats-Expected-Last-Subject-Sequence-Subject": "pair.pause.flow",
}
_ABSENT = {"Nats-Expected-Last-Subject-Sequence": "0"}


async def _pairs(url: str, args: argparse.Namespace, atomic: bool) -> dict[str, Any]:
    from stemd._natsconn import open_connection

    conn = await open_connection(url, name="floor")
    config = {"name": "PAIR", "subjects": ["pair.>"], "storage": "file"}
    try:
        await conn.ensure_stream({**config, "max_msgs_per_subject": 1, "allow_atomic": True})

        def make(prefix: str) -> Workflow:
            async def one(i: int) -> None:
                entry, doc = f"pair.idx.{prefix}{i}", f"pair.run.{prefix}{i}"
                if not atomic:
                    await conn.js_publish(entry, b"", headers=_FENCE)
                    await conn.js_publish(doc, VALUE, headers=_ABSENT)
                    return
                batch = {"Nats-Batch-Id": f"{prefix}{i}"}
                await conn.publish(
                    entry, b"", headers={**batch, "Nats-Batch-Sequence": "1", **_FENCE}
                )
                last = {**batch, "Nats-Batch-Sequence": "2", "Nats-Batch-Commit": "1"}
                await conn.js_publish(doc, VALUE, headers={**last, **_ABSENT})

            return one

        return await both(make, args)
    finally:
        await conn.close()


async def kv_pair(url: str, args: argparse.Namespace) -> dict[str, Any]:
    return await _pairs(url, args, atomic=False)


async def kv_atomic(url: str, args: argparse.Namespace) -> dict[str, Any]:
    return await _pairs(url, args, atomic=True)


async def kv_publish(url: str, args: argparse.Namespace) -> dict[str, Any]:
    from stemd._natsconn import open_connection

    conn = await open_connection(url, name="floor")
    try:
        await conn.ensure_stream({"name": "FLOOR", "subjects": ["floor.>"], "storage": "file"})

        async def one(i: int) -> None:
            for n in range(7):
                await conn.js_publish(f"floor.{i % 64}.{n}", VALUE)

        return await both(lambda _: one, args)
    finally:
        await conn.close()


async def kv_natspy(url: str, args: argparse.Namespace) -> dict[str, Any]:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="FLOORPY", subjects=["floorpy.>"])

        async def one(i: int) -> None:
            for n in range(7):
                await js.publish(f"floorpy.{i % 64}.{n}", VALUE)

        return await both(lambda _: one, args)
    finally:
        await nc.close()


KV = {
    "store": kv_store,
    "broker": kv_broker,
    "claimed": kv_claimed,
    "publish": kv_publish,
    "nats-py": kv_natspy,
    "pair": kv_pair,
    "atomic": kv_atomic,
}


def _line(kind: str, layer: str, row: dict[str, Any]) -> None:
    text = f"{kind:<6} {layer:<8} {row['workflows_per_s']:>8,.0f} wf/s"
    text += f"  CPU {row['cpu_us_per_workflow']:>6.1f} µs/wf"
    if "server_cpu_us_per_workflow" in row:
        text += f" (nats-server {row['server_cpu_us_per_workflow']:.1f})"
    if "p50_ms" in row:
        text += f"  one at a time p50 {row['p50_ms']:.3f} ms p99 {row['p99_ms']:.3f} ms"
    print(text, flush=True)


async def run_sqlite(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer, fn in SQLITE.items():
        if args.layers and layer not in args.layers:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            row = await fn(Path(tmp) / "floor.db", args)
        out[layer] = row
        _line("sqlite", layer, row)
    return out


async def run_kv(args: argparse.Namespace) -> dict[str, Any]:
    from stemd.testing._nats import nats_server

    out: dict[str, Any] = {}
    for layer, fn in KV.items():
        if args.layers and layer not in args.layers:
            continue
        async with nats_server() as server:
            pid = server.pid
            assert pid is not None
            before = cpu_seconds(pid)
            row = await fn(server.url, args)
            spent = cpu_seconds(pid) - before
            runs = args.warmup + args.runs + args.latency_runs
            row["server_cpu_us_per_workflow"] = round(1e6 * spent / runs, 1)
        out[layer] = row
        _line("kv", layer, row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["sqlite", "kv"])
    parser.add_argument("--layers", nargs="+", help="only these layers (default: all)")
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--latency-runs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64, help="tasks at once")
    parser.add_argument("--workers", type=int, default=32, help="the App's workers (engine)")
    args = parser.parse_args()
    summary: dict[str, Any] = {"cpus": os.cpu_count(), "load": os.getloadavg()[0]}
    if args.only in (None, "sqlite"):
        summary["sqlite"] = anyio.run(run_sqlite, args)
    if args.only in (None, "kv"):
        summary["kv"] = anyio.run(run_kv, args)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
