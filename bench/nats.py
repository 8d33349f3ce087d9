"""Throughput and end-to-end latency of 3-step flows through a stemd daemon on NATS.

    python bench/nats.py                      # KV store and SQLite store, both modes
    python bench/nats.py --store kv --mode pipeline --runs 5000

Starts a nats-server (JetStream, R1, file storage, default fsync) on a free loopback
port, then one daemon process per store configuration:

- ``kv``: JetStream KV store + JetStream broker;
- ``sqlite``: SQLite store (WAL, synchronous=FULL unless --sqlite-sync says otherwise)
  + JetStream broker.

The benchmark process is a client: it starts runs through the wire protocol
(``stem.api.start``, request/reply with the daemon) and learns of their completion from
the run events (``stem.events.run.<id>``). Latency is from just before the start request
to the arrival of the ``completed`` event.

Modes:
- ``pipeline``: N clients in a closed loop (N = each of ``--concurrency``, default 1, 8
  and 32), each starting a run and waiting for it to complete before starting the next
  (``min(--runs, 300 N)`` runs); with N = 1 it is the latency of one run on an idle daemon;
- ``batch``: every run started at once (``--in-flight`` start requests outstanding),
  then all awaited; throughput from the first start to the last completion.

Prints one line per measurement and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

# This file is called nats.py: keep its folder off the path, or `import nats` finds it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import stemd  # noqa: E402
from bench.daemons import Completions, cpu_seconds  # noqa: E402
from bench.workflows import three_steps  # noqa: E402
from stemd._natsconn import NatsConnection, open_connection  # noqa: E402
from stemd.testing._nats import nats_server  # noqa: E402

FLOW = three_steps.name


# -- the daemon (a child process) ----------------------------------------------------------


async def serve(url: str, store: str, concurrency: int) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with stemd.App(
            store=store,
            broker=url,
            workflows=[three_steps],
            concurrency=concurrency,
            options=stemd.AppOptions(nats=url),
        ):
            print("READY", flush=True)
            async for _ in signals:
                break


# -- the client ----------------------------------------------------------------------------


async def start(conn: NatsConnection, run_id: str) -> float:
    body = json.dumps({"workflow": FLOW, "run_id": run_id}).encode()
    t0 = time.perf_counter()
    reply = await conn.request("stem.api.start", body, timeout=30)
    if b'"created":true' not in reply.data:
        raise RuntimeError(f"start failed: {reply.data!r}")
    return t0


class CpuMeter:
    """CPU milliseconds per workflow of the daemon, of nats-server, and of this process
    (the client that starts the runs and follows their ends: on this machine, its CPU is
    not the daemon's)."""

    def __init__(self, daemon: int, server: int) -> None:
        self.pids = {"daemon": daemon, "server": server, "client": os.getpid()}

    def start(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def per_run(self, before: dict[str, float], runs: int) -> dict[str, float]:
        now = self.start()
        return {
            f"{name}_cpu_ms_per_wf": round((now[name] - before[name]) * 1000 / runs, 3)
            for name in self.pids
        }


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return {
        "p50_ms": round(pct(0.50), 2),
        "p90_ms": round(pct(0.90), 2),
        "p99_ms": round(pct(0.99), 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


async def pipeline(
    conn: NatsConnection,
    comp: Completions,
    tag: str,
    runs: int,
    concurrency: int,
    meter: CpuMeter | None = None,
) -> dict[str, Any]:
    latencies: list[float] = []
    cpu = meter.start() if meter else {}
    counter = iter(range(runs))

    async def client() -> None:
        for i in counter:
            run_id = f"{tag}-{i}"
            done = comp.event(run_id)
            t0 = await start(conn, run_id)
            with anyio.fail_after(60):
                await done.wait()
            latencies.append(comp.done[run_id] - t0)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(client)
    elapsed = time.perf_counter() - began
    usage = meter.per_run(cpu, runs) if meter else {}
    return {
        "runs": runs,
        "wf_per_s": round(runs / elapsed, 1),
        **percentiles(latencies),
        **usage,
    }


async def batch(
    conn: NatsConnection,
    comp: Completions,
    tag: str,
    runs: int,
    in_flight: int,
    meter: CpuMeter | None = None,
) -> dict[str, Any]:
    starts: dict[str, float] = {}
    cpu = meter.start() if meter else {}
    limit = anyio.Semaphore(in_flight)

    async def one(run_id: str) -> None:
        async with limit:
            starts[run_id] = await start(conn, run_id)

    ids = [f"{tag}-{i}" for i in range(runs)]
    for run_id in ids:
        comp.event(run_id)
    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for run_id in ids:
            tg.start_soon(one, run_id)
    with anyio.fail_after(300):
        for run_id in ids:
            await comp.event(run_id).wait()
    elapsed = max(comp.done[r] for r in ids) - began
    latencies = [comp.done[r] - starts[r] for r in ids]
    usage = meter.per_run(cpu, runs) if meter else {}
    return {
        "runs": runs,
        "wf_per_s": round(runs / elapsed, 1),
        **percentiles(latencies),
        **usage,
    }


async def measure(
    args: argparse.Namespace, url: str, server_pid: int, name: str, store: str
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--serve",
        url,
        store,
        "--daemon-concurrency",
        str(args.daemon_concurrency),
        *(["--uvloop"] if args.uvloop else []),
    ]
    proc = spawn(cmd)
    assert proc.stdout is not None
    stdout = proc.stdout
    results: dict[str, Any] = {}
    try:
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(stdout.readline)
        if line.strip() != b"READY":
            raise RuntimeError(f"daemon for {name} did not start")
        conn = await open_connection(url, name="bench-client", timeout=30)
        comp = Completions()
        meter = CpuMeter(proc.pid, server_pid)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(comp.follow, conn)
                await pipeline(conn, comp, f"{name}-warm", args.warmup, max(args.concurrency))
                for rep in range(args.repeat):
                    if args.mode in ("pipeline", "both"):
                        for c in args.concurrency:
                            n = min(args.runs, 300 * c)
                            r = await pipeline(conn, comp, f"{name}-p{c}-{rep}", n, c, meter)
                            print(f"{name:7} pipeline c={c:<4} {fmt(r)}", flush=True)
                            results.setdefault(f"pipeline_c{c}", []).append(r)
                    if args.mode in ("batch", "both"):
                        r = await batch(
                            conn, comp, f"{name}-b{rep}", args.runs, args.in_flight, meter
                        )
                        print(f"{name:7} batch    n={args.runs:<5} {fmt(r)}", flush=True)
                        results.setdefault("batch", []).append(r)
                tg.cancel_scope.cancel()
        finally:
            await conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        stdout.close()
    return {mode: median_of(rs) for mode, rs in results.items()}


def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE)


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = results[0].keys()
    return {k: statistics.median(r[k] for r in results) for k in keys}


def fmt(r: dict[str, Any]) -> str:
    return (
        f"{r['wf_per_s']:8.1f} wf/s   p50 {r['p50_ms']:7.2f} ms   p90 {r['p90_ms']:7.2f} ms   "
        f"p99 {r['p99_ms']:7.2f} ms   cpu/wf daemon {r.get('daemon_cpu_ms_per_wf', 0):.3f} ms "
        f"nats-server {r.get('server_cpu_ms_per_wf', 0):.3f} ms "
        f"client {r.get('client_cpu_ms_per_wf', 0):.3f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    print(
        f"stemd {stemd.__version__}  python {sys.version.split()[0]}  cpus {os.cpu_count()}  "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="stemd-bench-") as tmp:
        async with nats_server() as server:
            stores = {
                "kv": f"{server.url}?bucket=bench",
                "sqlite": f"sqlite:///{tmp}/bench.db?synchronous={args.sqlite_sync}",
            }
            chosen = list(stores) if args.store == "both" else [args.store]
            for name in chosen:
                assert server.pid is not None
                summary[name] = await measure(args, server.url, server.pid, name, stores[name])
    print(json.dumps({"load_after": round(os.getloadavg()[0], 2), **summary}, indent=1))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--store", choices=["kv", "sqlite", "both"], default="both")
    p.add_argument("--mode", choices=["pipeline", "batch", "both"], default="both")
    p.add_argument("--runs", type=int, default=3000, help="runs per measurement")
    p.add_argument("--repeat", type=int, default=3, help="measurements (median reported)")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument(
        "--concurrency",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 8, 32],
        help="pipeline clients, comma-separated: one measurement each (default 1,8,32)",
    )
    p.add_argument("--in-flight", type=int, default=256, help="batch: start requests at once")
    p.add_argument("--daemon-concurrency", type=int, default=64)
    p.add_argument("--sqlite-sync", default="FULL")
    p.add_argument("--uvloop", action="store_true", help="run the daemon on uvloop")
    p.add_argument("--serve", nargs=2, metavar=("URL", "STORE"), help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    ARGS = parse()
    options = {"use_uvloop": True} if ARGS.uvloop else {}
    if ARGS.serve:
        anyio.run(
            serve,
            ARGS.serve[0],
            ARGS.serve[1],
            ARGS.daemon_concurrency,
            backend_options=options,
        )
    else:
        anyio.run(main, ARGS, backend_options=options)
