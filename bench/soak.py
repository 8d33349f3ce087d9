"""A soak: runs started at a steady rate for a long while, the daemon SIGKILLed and
restarted now and then; figures over time, and nothing lost at the end.

    python bench/soak.py                                    # SQLite, 10 min, 50 runs/s
    python bench/soak.py --duration 120 --kill-every 30     # a shorter one
    python bench/soak.py --store nats --rate 20             # JetStream KV + broker

A ``stemd run`` daemon (a child process) runs ``bench.soak`` (bench/workflows.py: a step,
a durable sleep of ``--sleep`` seconds, a step). The benchmark process starts
``--rate`` runs per second on a fixed schedule as a client, SIGKILLs the daemon every
``--kill-every`` seconds and starts it again, and every ``--sample`` seconds prints:
seconds elapsed, runs started, runs ended, throughput over the last interval, and the
daemon's RSS and open file descriptors (and nats-server's, on NATS). Memory and
descriptors are compared at the same point of every daemon's life (its last sample
before a kill): they should not grow from one life to the next, nor within one.

At the end it waits for every run to complete, checks that none was lost or failed, and
prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
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
from bench.daemons import Daemon, open_files, rss_kib, write_config  # noqa: E402
from stemd.testing._nats import NatsServer, nats_server  # noqa: E402


def ended(path: Path) -> int:
    """Runs whose last step has run (each counted once)."""
    return len(set(path.read_text().split())) if path.exists() else 0


async def soak(
    args: argparse.Namespace,
    tmp: Path,
    store: str,
    broker: str | None,
    server: NatsServer | None,
) -> dict[str, Any]:
    done_file = tmp / "ended.txt"
    keys: dict[str, Any] = {
        "modules": ["bench.workflows"],
        "entry_points": False,
        "store": store,
        "concurrency": args.concurrency,
        "log_format": "json",
        "log_level": "warning",
        "lease": args.lease,
    }
    if broker is not None:
        keys["broker"] = broker
    daemon = Daemon(write_config(tmp / "stemd.toml", **keys), tmp / "daemon.log")
    daemon.start()
    started = 0
    samples: list[dict[str, Any]] = []
    lives: list[dict[str, Any]] = []
    downtimes: list[float] = []
    t0 = time.monotonic()

    async with stemd.App(store=store, broker=broker, workers=False) as client:

        async def starter() -> None:
            nonlocal started
            params = {"sleep": args.sleep, "file": str(done_file)}
            while time.monotonic() - t0 < args.duration:
                due = t0 + started / args.rate
                if due > time.monotonic():
                    await anyio.sleep(due - time.monotonic())
                await client.start_workflow("bench.soak", params, run_id=f"k{started:08d}")
                started += 1

        async def killer() -> None:
            while True:
                await anyio.sleep(args.kill_every)
                if time.monotonic() - t0 >= args.duration:
                    return
                if samples:
                    lives.append(samples[-1])
                daemon.kill()
                downtimes.append(daemon.start())

        async def sampler() -> None:
            last_ended, last_t = 0, time.monotonic()
            print(
                f"{'t':>6} {'started':>8} {'ended':>8} {'runs/s':>7} {'rss MiB':>8} "
                f"{'fds':>4}" + (f" {'nats MiB':>9} {'nats fds':>8}" if server else "")
            )
            while True:
                await anyio.sleep(args.sample)
                now = time.monotonic()
                count = ended(done_file)
                sample: dict[str, Any] = {
                    "t": round(now - t0),
                    "started": started,
                    "ended": count,
                    "runs_per_s": round((count - last_ended) / (now - last_t), 1),
                    "life": daemon.starts,
                }
                if daemon.alive:
                    sample["rss_mib"] = round(rss_kib(daemon.pid) / 1024, 1)
                    sample["fds"] = open_files(daemon.pid)
                if server is not None and server.pid is not None:
                    sample["nats_rss_mib"] = round(rss_kib(server.pid) / 1024, 1)
                    sample["nats_fds"] = open_files(server.pid)
                samples.append(sample)
                last_ended, last_t = count, now
                line = (
                    f"{sample['t']:>6} {started:>8} {count:>8} {sample['runs_per_s']:>7} "
                    f"{sample.get('rss_mib', '-'):>8} {sample.get('fds', '-'):>4}"
                )
                if server is not None:
                    line += (
                        f" {sample.get('nats_rss_mib', '-'):>9} {sample.get('nats_fds', '-'):>8}"
                    )
                print(line, flush=True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler)
            tg.start_soon(killer)
            await starter()
            tg.cancel_scope.cancel()
        if samples:
            lives.append(samples[-1])
        deadline = time.monotonic() + args.grace
        while ended(done_file) < started and time.monotonic() < deadline:  # noqa: ASYNC110
            await anyio.sleep(1.0)
        statuses: dict[str, int] = {}
        for state in await client.list_runs(limit=started + 10):
            statuses[state.status.value] = statuses.get(state.status.value, 0) + 1
    daemon.stop()
    elapsed = time.monotonic() - t0
    return {
        "store": "nats" if server is not None else "sqlite",
        "duration_s": args.duration,
        "rate": args.rate,
        "started": started,
        "statuses": statuses,
        "lost": started - statuses.get("completed", 0),
        "kills": len(downtimes),
        "restart_s_max": round(max(downtimes, default=0.0), 2),
        "throughput_runs_per_s": round(started / elapsed, 1),
        "rss_mib_by_life": [s.get("rss_mib") for s in lives],
        "fds_by_life": [s.get("fds") for s in lives],
        "nats_rss_mib_by_life": [s.get("nats_rss_mib") for s in lives] if server else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=("sqlite", "nats"), default="sqlite")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of starts")
    parser.add_argument("--rate", type=float, default=50.0, help="runs started per second")
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--sample", type=float, default=10.0)
    parser.add_argument("--sleep", type=float, default=0.2, help="each run's durable sleep")
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--grace", type=float, default=120.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stemd-soak-") as tmp:
        if args.store == "sqlite":
            result = await soak(args, Path(tmp), f"sqlite:///{tmp}/stemd.db", None, None)
        else:
            await anyio.Path(tmp, "nats").mkdir()
            async with nats_server(store_dir=f"{tmp}/nats") as server:
                store = f"{server.url}?bucket=soak&timeout=5&retry_for=60"
                broker = f"{server.url}?timeout=5&publish_retry=60&ack_wait=5"
                result = await soak(args, Path(tmp), store, broker, server)
    print(json.dumps(result))
    if result["lost"]:
        raise SystemExit(f"{result['lost']} runs did not complete: {result['statuses']}")


if __name__ == "__main__":
    anyio.run(main)
