"""Many runs asleep at once: how late they wake, and what a sleeping run costs the daemon.

    python bench/sleepers.py                                   # SQLite, 100,000 runs
    python bench/sleepers.py --store nats --runs 20000         # JetStream KV + broker
    python bench/sleepers.py --runs 10000 --window 20          # a quick look

A ``stemd run`` daemon (the real one, as a child process) serves ``bench.sleeper``
(bench/workflows.py): each run sleeps durably until its wake time, then a step records
``now - wake time``. The benchmark process starts ``--runs`` runs as a client (its own
App, executing nothing), with wake times spread evenly over ``--window`` seconds, the
first one ``--lead`` seconds after the start (time to start every run and put it to
sleep). It prints:

- how fast runs were started and put to sleep;
- the daemon's resident memory (RSS) idle, with every run asleep, and at the end, and
  the growth per sleeping run;
- the lateness of the wake-ups: p50, p99 and max of (step start - wake time), which
  is what a user sees (the timer's own lag plus the claim and the re-entry).

On SQLite the timer holds the wake-ups of the next 60 s in a heap fed by an indexed
query; on NATS the broker also schedules each wake-up as a JetStream scheduled message
(server resolution about 250 ms) and the timer runs beside it.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

# bench/nats.py would shadow the nats package: keep this folder off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import stemd  # noqa: E402
from bench.daemons import Daemon, cpu_seconds, percentile, rss_kib, write_config  # noqa: E402
from stemd.testing._nats import nats_server  # noqa: E402


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def asleep(args: argparse.Namespace, client: stemd.App, db: Path | None) -> int:
    """How many runs are suspended now."""
    if db is not None:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            (n,) = con.execute("SELECT count(*) FROM runs WHERE status = 'suspended'").fetchone()
            return int(n)
        finally:
            con.close()
    return len(await client.list_runs(status="suspended", limit=args.runs + 10))


async def measure(
    args: argparse.Namespace, tmp: Path, store: str, broker: str | None
) -> dict[str, Any]:
    effects = tmp / "woke.txt"
    keys: dict[str, Any] = {
        "modules": ["bench.workflows"],
        "entry_points": False,
        "store": store,
        "concurrency": args.concurrency,
        "log_format": "json",
        "log_level": "warning",
        "lease": 30.0,
    }
    if broker is not None:
        keys["broker"] = broker
    daemon = Daemon(write_config(tmp / "stemd.toml", **keys), tmp / "daemon.log")
    ready = daemon.start()
    db = Path(store[len("sqlite:///") :].partition("?")[0]) if store.startswith("sqlite:") else None
    try:
        await anyio.sleep(2)
        rss_idle = rss_kib(daemon.pid)
        async with stemd.App(store=store, broker=broker, workers=False) as client:
            t0 = time.time()
            first_wake = t0 + args.lead
            limit = anyio.Semaphore(args.clients)

            async def start(i: int) -> None:
                at = first_wake + args.window * i / args.runs
                async with limit:
                    await client.start_workflow(
                        "bench.sleeper", {"at": at, "file": str(effects)}, run_id=f"s{i:07d}"
                    )

            async with anyio.create_task_group() as tg:
                for i in range(args.runs):
                    tg.start_soon(start, i)
            started = time.time() - t0
            print(f"  started {args.runs} runs in {started:.1f}s", flush=True)
            peak_asleep = 0
            while time.time() < first_wake - 1.0:
                peak_asleep = max(peak_asleep, await asleep(args, client, db))
                if peak_asleep >= args.runs:
                    break
                await anyio.sleep(1.0)
            all_asleep = time.time() - t0
            rss_asleep = rss_kib(daemon.pid)
            print(
                f"  {peak_asleep} asleep {all_asleep:.1f}s after the first start; "
                f"first wake-up at +{args.lead:.0f}s",
                flush=True,
            )
            deadline = first_wake + args.window + args.grace
            while len(lines(effects)) < args.runs and time.time() < deadline:  # noqa: ASYNC110
                await anyio.sleep(1.0)
        woke = [float(line.split()[1]) * 1000 for line in lines(effects)]
        rss_end = rss_kib(daemon.pid)
        cpu = cpu_seconds(daemon.pid)
    finally:
        daemon.stop()
    early = sum(1 for late in woke if late < 0)
    return {
        "store": "sqlite" if db is not None else "nats",
        "runs": args.runs,
        "window_s": args.window,
        "ready_s": round(ready, 2),
        "start_s": round(started, 1),
        "asleep_at_once": peak_asleep,
        "woke": len(woke),
        "early": early,
        "late_p50_ms": round(percentile(woke, 50), 1),
        "late_p99_ms": round(percentile(woke, 99), 1),
        "late_max_ms": round(max(woke, default=float("nan")), 1),
        "rss_idle_mib": round(rss_idle / 1024, 1),
        "rss_asleep_mib": round(rss_asleep / 1024, 1),
        "rss_end_mib": round(rss_end / 1024, 1),
        "rss_per_sleeper_bytes": round((rss_asleep - rss_idle) * 1024 / max(1, peak_asleep)),
        "daemon_cpu_s": round(cpu, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=("sqlite", "nats"), default="sqlite")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--window", type=float, default=None, help="seconds (default runs/1000)")
    parser.add_argument("--lead", type=float, default=None, help="seconds before the first wake")
    parser.add_argument("--grace", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--sqlite-sync", choices=("FULL", "NORMAL"), default="FULL")
    args = parser.parse_args()
    rate = 1000 if args.store == "sqlite" else 150  # runs put to sleep per second, roughly
    if args.window is None:
        args.window = max(10.0, args.runs / rate)
    if args.lead is None:
        args.lead = 15.0 + args.runs / rate * 1.5
    with tempfile.TemporaryDirectory(prefix="stemd-sleepers-") as tmp:
        if args.store == "sqlite":
            store = f"sqlite:///{tmp}/stemd.db?synchronous={args.sqlite_sync}"
            result = await measure(args, Path(tmp), store, None)
        else:
            await anyio.Path(tmp, "nats").mkdir()
            async with nats_server(store_dir=f"{tmp}/nats") as server:
                store = f"{server.url}?bucket=sleepers&timeout=5&retry_for=60"
                broker = f"{server.url}?timeout=5&publish_retry=60"
                result = await measure(args, Path(tmp), store, broker)
    print(
        f"{result['store']}: {result['woke']}/{result['runs']} woke "
        f"({result['asleep_at_once']} asleep at once; {result['early']} early); lateness "
        f"p50 {result['late_p50_ms']} ms, p99 {result['late_p99_ms']} ms, "
        f"max {result['late_max_ms']} ms; RSS idle {result['rss_idle_mib']} MiB, asleep "
        f"{result['rss_asleep_mib']} MiB ({result['rss_per_sleeper_bytes']} B per sleeping "
        f"run), end {result['rss_end_mib']} MiB"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    anyio.run(main)
