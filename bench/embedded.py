"""Throughput and latency of the embedded App on SQLite (in-process broker, fsync on).

    python bench/embedded.py                          # 5,000 runs, FULL then NORMAL
    python bench/embedded.py --runs 20000 --sync FULL
    python bench/embedded.py --prefill 1000000 --db /tmp/big.db   # the 1M-runs check

Each measurement opens a fresh App on a SQLite file (WAL) and runs a 3-step flow with
trivial steps:

- **throughput**: ``--runs`` runs started by ``--clients`` concurrent tasks as fast as
  they can, executed by ``--concurrency`` workers; the time from the first start to the
  last completion gives workflows/s and steps/s;
- **latency**: ``--latency-runs`` runs one at a time, each timed from just before
  ``start_workflow`` to the return of ``wait_for_completion``; p50 and p99.

``--prefill M`` first inserts M finished runs (3 checkpoints each) straight into the
database with bulk INSERTs, not through the engine, to check that a big history does not
slow new runs down. ``--db`` keeps the database (and a prefill) between invocations;
by default each measurement uses a new file in a temporary directory.

Prints one line per measurement and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stemd
from bench.workflows import three_steps
from stemd._model import RunStatus
from stemd._store.base import RunRecord
from stemd._store.sqlite import SqliteStore
from stemd._store.sqlite_schema import RUN_COLUMNS, record_to_row

flow = three_steps


def prefill(path: Path, count: int, batch: int = 50_000) -> float:
    """Insert ``count`` completed runs of ``bench.flow`` (3 checkpoints each) in bulk;
    return the seconds it took."""
    started = time.perf_counter()

    async def create_schema() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    anyio.run(create_schema)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous = OFF")
    cols = ", ".join(RUN_COLUMNS)
    insert_run = f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})"
    insert_cp = "INSERT INTO checkpoints (run_id, name, value) VALUES (?, ?, ?)"
    base = datetime(2024, 1, 1, tzinfo=UTC)
    base_ms = int(base.timestamp() * 1000)
    # Ids shaped like the engine's (time-ordered), one millisecond apart, in the past:
    # a history that the new runs' ids follow, as in a long-lived database.
    (done,) = db.execute(
        "SELECT count(*) FROM runs WHERE run_id < ?", (f"{base_ms + count:012x}",)
    ).fetchone()
    while done < count:
        n = min(batch, count - done)
        runs = []
        cps = []
        for i in range(done, done + n):
            at = base + timedelta(milliseconds=i)
            rec = RunRecord(
                run_id=f"{base_ms + i:012x}{i:012x}",
                workflow="bench.flow",
                status=RunStatus.COMPLETED,
                params=b"null",
                created_at=at,
                updated_at=at,
                result=b"3",
                finished_at=at,
                token=1,
                attempts=1,
            )
            runs.append(record_to_row(rec))
            cps += [
                (rec.run_id, "one", b"1"),
                (rec.run_id, "two", b"2"),
                (rec.run_id, "three", b"3"),
            ]
        db.execute("BEGIN")
        db.executemany(insert_run, runs)
        db.executemany(insert_cp, cps)
        db.execute("COMMIT")
        done += n
        print(f"  prefilled {done:,} runs", file=sys.stderr, flush=True)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - started


def _written() -> int:
    """Bytes this process has caused to be written to storage (Linux), else 0."""
    try:
        with open("/proc/self/io") as io:
            for line in io:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


async def throughput(url: str, runs: int, clients: int, concurrency: int) -> dict[str, Any]:
    """Start ``runs`` runs from ``clients`` tasks; time until the last one completed."""
    async with stemd.App(store=url, workflows=[flow], concurrency=concurrency) as app:
        finished = 0
        all_done = anyio.Event()

        def on_event(event: Any, raw: bytes | None) -> None:
            nonlocal finished
            if event.workflow == "bench.flow" and event.status.is_terminal:
                finished += 1
                if finished == runs:
                    all_done.set()

        stop = app.engine.events.listen(on_event)
        per_client = [runs // clients + (1 if i < runs % clients else 0) for i in range(clients)]

        async def client(n: int) -> None:
            for _ in range(n):
                await app.start_workflow(flow)

        started = time.perf_counter()
        cpu_started = time.process_time()
        io_started = _written()
        async with anyio.create_task_group() as tg:
            for n in per_client:
                tg.start_soon(client, n)
        with anyio.fail_after(600):
            await all_done.wait()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        written = _written() - io_started
        stop()
        failed = await app.list_runs(workflow="bench.flow", status="failed", limit=1)
        assert not failed, failed
        stats = getattr(app.store, "statistics", lambda: None)()
    return {
        "runs": runs,
        "seconds": round(elapsed, 3),
        "workflows_per_s": round(runs / elapsed, 1),
        "steps_per_s": round(3 * runs / elapsed, 1),
        # Less sensitive than wall time to other processes on the machine.
        "cpu_us_per_workflow": round(1e6 * cpu / runs, 1),
        "disk_kb_written_per_workflow": round(written / 1024 / runs, 2),
        "commits": stats.batches if stats else None,
        "writes_per_commit": round(stats.requests / max(1, stats.batches), 2) if stats else None,
    }


async def latency(url: str, runs: int) -> dict[str, Any]:
    """Run ``runs`` runs one at a time; end-to-end latency percentiles in ms."""
    async with stemd.App(store=url, workflows=[flow]) as app:
        for _ in range(20):  # warm up
            await app.wait_for_completion(await app.start_workflow(flow), timeout=10)
        samples = []
        for _ in range(runs):
            t0 = time.perf_counter()
            run_id = await app.start_workflow(flow)
            result = await app.wait_for_completion(run_id, timeout=10)
            samples.append(time.perf_counter() - t0)
            assert result.is_completed, result
    samples.sort()
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "runs": runs,
        "p50_ms": round(q[49] * 1000, 3),
        "p99_ms": round(q[98] * 1000, 3),
        "mean_ms": round(statistics.fmean(samples) * 1000, 3),
    }


def _report(label: str, sync: str, t: dict[str, Any], lat: dict[str, Any] | None) -> None:
    print(
        f"{label:<9} synchronous={sync:<6} throughput: {t['workflows_per_s']:>7,.0f} workflows/s"
        f" {t['steps_per_s']:>7,.0f} steps/s  ({t['runs']} runs in {t['seconds']} s,"
        f" {t['writes_per_commit']} writes/commit, {t['cpu_us_per_workflow']} µs CPU and"
        f" {t['disk_kb_written_per_workflow']} KiB written per workflow)",
        flush=True,
    )
    if lat is not None:
        print(
            f"{label:<9} synchronous={sync:<6} latency:    p50 {lat['p50_ms']:.2f} ms"
            f"  p99 {lat['p99_ms']:.2f} ms  ({lat['runs']} sequential runs)",
            flush=True,
        )


def _median(rows: list[dict[str, Any]], kind: str, key: str) -> float | None:
    values = [r[kind][key] for r in rows if kind in r]
    return round(statistics.median(values), 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5000, help="runs for throughput")
    parser.add_argument("--latency-runs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=64, help="concurrent starters")
    parser.add_argument("--concurrency", type=int, default=32, help="App workers")
    parser.add_argument("--sync", choices=["FULL", "NORMAL", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=1, help="measurements of each kind")
    parser.add_argument("--prefill", type=int, default=0, help="finished runs to insert first")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="with --prefill: also measure an empty database before each prefilled one"
        " and print the degradation of the medians",
    )
    parser.add_argument("--db", type=Path, default=None, help="keep the database here")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()

    modes = ["FULL", "NORMAL"] if args.sync == "both" else [args.sync]
    tmp = Path(tempfile.mkdtemp(prefix="stemd-bench-"))
    prefilled = args.db or tmp / "prefilled.db"
    summary: dict[str, Any] = {"prefill": args.prefill, "medians": [], "results": []}
    if args.prefill:
        seconds = prefill(prefilled, args.prefill)
        print(f"prefill: {args.prefill:,} finished runs in {prefilled} ({seconds:.1f} s)")
    labels = (
        ["empty", "prefilled"]
        if args.prefill and args.baseline
        else ["prefilled" if args.prefill else "empty"]
    )
    for sync in modes:
        rows: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
        for i in range(args.repeat):
            for label in labels:
                if label == "prefilled":
                    path = prefilled
                else:
                    path = args.db if args.db and not args.prefill else tmp / f"{sync}-{i}.db"
                url = f"sqlite:///{path}?synchronous={sync}"
                t = anyio.run(throughput, url, args.runs, args.clients, args.concurrency)
                lat = None if args.skip_latency else anyio.run(latency, url, args.latency_runs)
                _report(label, sync, t, lat)
                row: dict[str, Any] = {"db": label, "synchronous": sync, "throughput": t}
                if lat is not None:
                    row["latency"] = lat
                rows[label].append(row)
                summary["results"].append(row)
        for label in labels:
            median = {
                "db": label,
                "synchronous": sync,
                "workflows_per_s": _median(rows[label], "throughput", "workflows_per_s"),
                "steps_per_s": _median(rows[label], "throughput", "steps_per_s"),
                "cpu_us_per_workflow": _median(rows[label], "throughput", "cpu_us_per_workflow"),
                "disk_kb_written_per_workflow": _median(
                    rows[label], "throughput", "disk_kb_written_per_workflow"
                ),
                "p50_ms": _median(rows[label], "latency", "p50_ms"),
                "p99_ms": _median(rows[label], "latency", "p99_ms"),
            }
            summary["medians"].append(median)
            latency_text = (
                f", p50 {median['p50_ms']} ms, p99 {median['p99_ms']} ms"
                if median["p50_ms"] is not None
                else ""
            )
            print(
                f"median of {args.repeat}: {label} synchronous={sync}:"
                f" {median['workflows_per_s']:,.0f} workflows/s{latency_text},"
                f" {median['cpu_us_per_workflow']} µs CPU and"
                f" {median['disk_kb_written_per_workflow']} KiB written per workflow",
                flush=True,
            )
        if len(labels) == 2:
            empty = summary["medians"][-2]["workflows_per_s"]
            full = summary["medians"][-1]["workflows_per_s"]
            change = 100 * (full - empty) / empty
            summary["degradation_percent"] = round(-change, 1)
            print(
                f"after {args.prefill:,} finished runs: {change:+.1f} % workflows/s"
                f" (synchronous={sync})",
                flush=True,
            )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
