"""Scale-out: 1 and 2 ``stemd run`` daemons on one NATS server and on a 3-node cluster,
and the CPU that each process spends per workflow.

    python bench/scale.py                                  # single and cluster, 1 and 2 daemons
    python bench/scale.py --topology single --daemons 1,2 --runs 3000 --repeat 3
    python bench/scale.py --topology single --store sqlite --daemons 1,2   # one shared file

For each measurement it starts, from nothing, the NATS side from the shipped configs
(deploy/nats/single.conf, or the three deploy/nats/cluster/n*.conf), with only their
loopback ports and store directories substituted, then ``--daemons`` real daemons
(``python -m stemd run --config ...``, serving bench/workflows.py's 3-step flow ``bench.flow``;
in the cluster, daemon i connects to node i mod 3), and acts as a client: it starts
``--runs`` runs through the wire protocol (``stem.api.start``, ``--in-flight`` requests at
once, answered by whichever daemon the queue group picks) and waits for every run's
``completed`` event. A warm-up batch comes first.

Stores: ``kv`` (JetStream KV + JetStream broker: the multi-host deployment; R3 in the
cluster) and ``sqlite`` (one SQLite file shared by the daemons on this host + the
JetStream broker; single server only). A SQLite file per daemon is not a shared store:
daemons would take each other's runs from the work queue and find no such run.

Printed per measurement: workflows/s from the first start to the last completion, p50
and p99 of start → completed, and CPU milliseconds per workflow (user + system, from
/proc/<pid>/stat before and after) of each daemon, of each nats-server and of this client;
from the daemons' /metrics, the runs each one started and finished (the split), their
slices and lease losses; from the work queue's consumer, the redeliveries. A JSON summary
(medians over ``--repeat``) comes last, for bench/compare.py.

The machine has 2 cores: 2 daemons, nats-server and the client share them, so the
wall-clock figures cannot add up here; the CPU per workflow is what projects to N
machines (docs/explanation/performance.md, "Scale-out").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

# bench/nats.py would shadow the nats package: keep this folder off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import stemd  # noqa: E402
from bench.daemons import (  # noqa: E402
    Completions,
    Daemon,
    cpu_seconds,
    percentile,
    write_config,
)
from bench.workflows import three_steps  # noqa: E402
from stemd._natsconn import NatsConnection, open_connection  # noqa: E402
from tests.chaos.cluster import ClusterNode, adapt_configs, free_ports  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

ROOT = _HERE.parent
SINGLE = [ROOT / "deploy" / "nats" / "single.conf"]
CLUSTER = [ROOT / "deploy" / "nats" / "cluster" / f"n{i}.conf" for i in (1, 2, 3)]
FLOW = three_steps.name
STREAM = "STEM_TASKS"
QUEUE = "workflow"


# -- the NATS side: the shipped configs on free loopback ports ----------------------------


def adapt(configs: list[Path], tmp: Path, sync: str | None) -> list[ClusterNode]:
    """The nodes of ``configs`` (written into ``tmp``) with fresh loopback ports and store
    directories; ``sync`` replaces ``sync_interval`` unless ``None``."""
    try:
        return [ClusterNode(*spec) for spec in adapt_configs(configs, tmp, sync)]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


@contextlib.asynccontextmanager
async def nats_nodes(configs: list[Path], tmp: Path, sync: str | None) -> AsyncIterator[Any]:
    """Start the nodes; with several, wait until the cluster has a meta leader."""
    nodes = adapt(configs, tmp, sync)
    try:
        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(node.start)
        with anyio.fail_after(30):
            while len(nodes) > 1 and not await _meta_leader(nodes):  # noqa: ASYNC110 - HTTP
                await anyio.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            node.kill()


async def _meta_leader(nodes: list[ClusterNode]) -> bool:
    for node in nodes:
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            if ((await node.http_json("/jsz")).get("meta_cluster") or {}).get("leader"):
                return True
    return False


# -- the daemons' /metrics ------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """The samples of a daemon's /metrics, summed over labels, by metric name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.partition("{")[0]
        with contextlib.suppress(ValueError):
            out[name] = out.get(name, 0.0) + float(value)
    return out


METRICS = {
    "started": "stemd_runs_started_total",
    "finished": "stemd_runs_finished_total",
    "slices": "stemd_slice_duration_seconds_count",
    "lease_losses": "stemd_lease_losses_total",
    "swept": "stemd_sweeper_requeued",
}


# -- the client -----------------------------------------------------------------------------


async def batch(
    conn: NatsConnection,
    comp: Completions,
    tag: str,
    runs: int,
    in_flight: int,
    timeout: float,
    rate: float = 0.0,
) -> tuple[float, list[float]]:
    """Start ``runs`` runs (``in_flight`` requests at once; with ``rate``, at most that
    many per second, evenly) and wait for all to complete; the seconds from the first
    start to the last completion, and each run's latency."""
    starts: dict[str, float] = {}
    limit = anyio.Semaphore(in_flight)

    async def one(run_id: str) -> None:
        body = json.dumps({"workflow": FLOW, "run_id": run_id}).encode()
        async with limit:
            starts[run_id] = time.perf_counter()
            reply = await conn.request("stem.api.start", body, timeout=60)
        if b'"created":true' not in reply.data:
            raise RuntimeError(f"start failed: {reply.data!r}")

    ids = [f"{tag}-{i}" for i in range(runs)]
    for run_id in ids:
        comp.event(run_id)
    began = time.perf_counter()
    with anyio.fail_after(timeout):
        async with anyio.create_task_group() as tg:
            for i, run_id in enumerate(ids):
                if rate:
                    await anyio.sleep(max(0.0, began + i / rate - time.perf_counter()))
                tg.start_soon(one, run_id)
        for run_id in ids:
            await comp.event(run_id).wait()
    elapsed = max(comp.done[r] for r in ids) - began
    return elapsed, [comp.done[r] - starts[r] for r in ids]


class Tap:
    """Counts every message through the server by the kind of its subject (``--tap``: it
    costs the server a copy of each, so CPU figures of a tapped run are not comparable)."""

    KINDS = (
        ("$JS.API.CONSUMER.MSG.NEXT.", "pull request"),
        ("$JS.API.DIRECT.GET.", "direct get"),
        ("$JS.API.", "other JS API"),
        ("$JS.ACK.", "ack/progress"),
        ("$KV.", "KV write"),
        ("stem.task.", "task publish"),
        ("stem.events.", "run event"),
        ("stem.api.", "API request"),
        ("$JS.EVENT.", "advisory"),
        ("_INBOX.", "reply/delivery"),
        ("$SYS.", "system"),
    )

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.stop = False

    def kind(self, subject: str) -> str:
        for prefix, kind in self.KINDS:
            if subject.startswith(prefix):
                if kind == "KV write":
                    # $KV.<bucket>.<run|idx|...>
                    return "KV write " + subject.split(".", 3)[2]
                return kind
        return subject.split(".", 1)[0]

    async def follow(self, conn: NatsConnection, *, task_status: Any) -> None:
        sub = await conn.subscribe(">", buffer=10_000_000)
        await conn.flush()
        task_status.started()
        async for msg in sub.messages:
            if self.stop:
                break
            kind = self.kind(msg.subject)
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def per_run(self, runs: int) -> dict[str, float]:
        items = sorted(self.counts.items(), key=lambda kv: -kv[1])
        return {k: round(v / runs, 2) for k, v in items}


async def consumer_info(conn: NatsConnection) -> dict[str, Any]:
    """The work queue consumer's info (empty before it exists)."""
    try:
        info: dict[str, Any] = await conn.js_api(f"CONSUMER.INFO.{STREAM}.{QUEUE}", timeout=5)
    except stemd.StemError:
        return {}
    return info


async def sample_waiting(conn: NatsConnection, into: list[int]) -> None:
    """Every 0.25 s, the number of pull requests waiting at the work queue's consumer."""
    while True:
        await anyio.sleep(0.25)
        into.append(int((await consumer_info(conn)).get("num_waiting", 0)))


# -- one measurement ------------------------------------------------------------------------


def daemon_keys(args: argparse.Namespace, store: str, broker: str, port: int) -> dict[str, Any]:
    return {
        "modules": ["bench.workflows"],
        "entry_points": False,
        "store": store,
        "broker": broker,
        "concurrency": args.concurrency,
        "log_format": "json",
        "log_level": "warning",
        "event_loop": args.event_loop,
        "http_address": f"127.0.0.1:{port}",
    }


def stores(store: str, urls: list[str], tmp: Path, i: int) -> tuple[str, str]:
    """The store and broker URLs of daemon ``i``."""
    url = urls[i % len(urls)]
    replicas = f"replicas={len(urls)}&" if len(urls) > 1 else ""
    broker = f"{url}?{replicas}timeout=5"
    if store == "kv":
        return f"{url}?bucket=scale&{replicas}timeout=5", broker
    return f"sqlite:///{tmp / 'shared.db'}", broker


async def measure(
    args: argparse.Namespace, topology: str, store: str, count: int
) -> dict[str, Any]:
    configs = SINGLE if topology == "single" else CLUSTER
    with tempfile.TemporaryDirectory(prefix="stemd-scale-") as name:
        tmp = Path(name)
        (tmp / "nats").mkdir()
        async with nats_nodes(configs, tmp / "nats", args.sync) as nodes:
            urls = [node.url for node in nodes]
            ports = free_ports(count)
            daemons = []
            try:
                ready = []
                for i in range(count):
                    s, b = stores(store, urls, tmp, i)
                    config = write_config(tmp / f"d{i}.toml", **daemon_keys(args, s, b, ports[i]))
                    daemon = Daemon(config, tmp / f"d{i}.log")
                    daemons.append(daemon)
                    ready.append(await anyio.to_thread.run_sync(daemon.start))
                return await drive(args, nodes, daemons, ports, ready)
            finally:
                for daemon in daemons:
                    daemon.stop()


async def drive(
    args: argparse.Namespace,
    nodes: list[ClusterNode],
    daemons: list[Daemon],
    ports: list[int],
    ready: list[float],
) -> dict[str, Any]:
    conn = await open_connection(nodes[0].url, name="bench-scale", timeout=30)
    comp = Completions()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(comp.follow, conn)
            if args.warmup:
                await batch(conn, comp, "warm", args.warmup, args.in_flight, args.timeout)
            procs = {f"daemon{i}": d.pid for i, d in enumerate(daemons)}
            procs.update({f"nats-{n.name}": n.pid or 0 for n in nodes})
            procs["client"] = os.getpid()
            # What each process spends doing nothing (sessions, sweeps, pull requests).
            idle0 = {k: cpu_seconds(pid) for k, pid in procs.items()}
            await anyio.sleep(args.idle)
            idle = {
                k: round((cpu_seconds(pid) - idle0[k]) * 1000 / args.idle, 1)
                for k, pid in procs.items()
            }
            cpu0 = {k: cpu_seconds(pid) for k, pid in procs.items()}
            metrics0 = [await anyio.to_thread.run_sync(scrape, p) for p in ports]
            info0 = await consumer_info(conn)
            varz0 = [await n.http_json("/varz") for n in nodes]
            tap = Tap()
            if args.tap:
                await tg.start(tap.follow, conn)
            waiting: list[int] = []
            with profiled(args.profile, daemons):
                async with anyio.create_task_group() as sampler:
                    sampler.start_soon(sample_waiting, conn, waiting)
                    elapsed, latencies = await batch(
                        conn, comp, "run", args.runs, args.in_flight, args.timeout, args.rate
                    )
                    sampler.cancel_scope.cancel()
            tap.stop = True
            cpu1 = {k: cpu_seconds(pid) for k, pid in procs.items()}
            metrics1 = [await anyio.to_thread.run_sync(scrape, p) for p in ports]
            info1 = await consumer_info(conn)
            varz1 = [await n.http_json("/varz") for n in nodes]
            tg.cancel_scope.cancel()
    finally:
        await conn.close()
    runs = args.runs
    cpu = {k: round((cpu1[k] - cpu0[k]) * 1000 / runs, 3) for k in procs}
    per_daemon = []
    for m0, m1 in zip(metrics0, metrics1, strict=True):
        per_daemon.append({k: m1.get(v, 0.0) - m0.get(v, 0.0) for k, v in METRICS.items()})
    daemon_cpu = [cpu[f"daemon{i}"] for i in range(len(daemons))]
    nats_cpu = [cpu[f"nats-{n.name}"] for n in nodes]
    return {
        "runs": runs,
        "wf_per_s": round(runs / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "cpu_ms_per_wf": cpu,
        "daemons_cpu_ms_per_wf": round(sum(daemon_cpu), 3),
        "nats_cpu_ms_per_wf": round(sum(nats_cpu), 3),
        "nats_busiest_cpu_ms_per_wf": max(nats_cpu),
        "started": [round(d["started"]) for d in per_daemon],
        "finished": [round(d["finished"]) for d in per_daemon],
        "slices_per_run": round(sum(d["slices"] for d in per_daemon) / runs, 3),
        "lease_losses": round(sum(d["lease_losses"] for d in per_daemon)),
        "swept": round(sum(d["swept"] for d in per_daemon)),
        # Pull requests waiting at the consumer (the server keeps at most max_waiting).
        "pull_waiting_max": max(waiting, default=0),
        "pull_waiting_median": round(statistics.median(waiting)) if waiting else 0,
        "redelivered": info1.get("num_redelivered", 0) - info0.get("num_redelivered", 0),
        # Messages into and out of the servers per workflow (routes between nodes too).
        "nats_msgs_in_per_wf": round(_delta(varz0, varz1, "in_msgs") / runs, 2),
        "nats_msgs_out_per_wf": round(_delta(varz0, varz1, "out_msgs") / runs, 2),
        "ready_s": [round(r, 3) for r in ready],
        "idle_cpu_ms_per_s": idle,
        **({"messages_per_wf": tap.per_run(runs)} if args.tap else {}),
    }


@contextlib.contextmanager
def profiled(into: Path | None, daemons: list[Daemon]) -> Iterator[None]:
    """With ``into``, a py-spy profile of each daemon (collapsed stacks, for flamegraphs or
    grep) over the block, in ``into/daemon<i>-<pid>.txt``."""
    if into is None:
        yield
        return
    into.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    flags = ["-r", "250", "--nonblocking", "-f", "raw"]
    procs = [
        subprocess.Popen(
            [str(spy), "record", "-p", str(d.pid), *flags, "-o", str(into / f"d{i}-{d.pid}.txt")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, d in enumerate(daemons)
    ]
    try:
        time.sleep(0.5)  # py-spy attaches
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait(30)


def _delta(before: list[dict[str, Any]], after: list[dict[str, Any]], key: str) -> float:
    return float(sum(a.get(key, 0) - b.get(key, 0) for b, a in zip(before, after, strict=True)))


def fmt(label: str, r: dict[str, Any]) -> str:
    cpu = "  ".join(f"{k} {v:.3f}" for k, v in r["cpu_ms_per_wf"].items())
    return (
        f"{label:<22} {r['wf_per_s']:7.1f} wf/s  p50 {r['p50_ms']:7.1f} ms  "
        f"p99 {r['p99_ms']:7.1f} ms\n{'':22} CPU ms/wf: {cpu}\n{'':22} "
        f"started {r['started']} finished {r['finished']} slices/run {r['slices_per_run']} "
        f"lease losses {r['lease_losses']} swept {r['swept']} redelivered {r['redelivered']} "
        f"pull requests waiting: max {r['pull_waiting_max']} median {r['pull_waiting_median']}"
        f"\n{'':22} NATS messages per workflow: in {r['nats_msgs_in_per_wf']} "
        f"out {r['nats_msgs_out_per_wf']}\n{'':22} idle CPU ms/s: "
        + "  ".join(f"{k} {v}" for k, v in r["idle_cpu_ms_per_s"].items())
        + (
            f"\n{'':22} messages per workflow: {r['messages_per_wf']}"
            if "messages_per_wf" in r
            else ""
        )
    )


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Numbers: the median over the repeats; lists and dicts: element-wise medians."""

    def med(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, dict):
            return {k: med([v[k] for v in values]) for k in first}
        if isinstance(first, list):
            return [med([v[i] for v in values]) for i in range(len(first))]
        return statistics.median(values)

    return {k: med([r[k] for r in results]) for k in results[0]}


async def main(args: argparse.Namespace) -> None:
    print(
        f"stemd {stemd.__version__}  python {sys.version.split()[0]}  cpus {os.cpu_count()}  "
        f"load {os.getloadavg()[0]:.2f}  sync {args.sync or 'as shipped'}",
        flush=True,
    )
    summary: dict[str, Any] = {}
    for topology in args.topology:
        for store in args.store:
            if store == "sqlite" and topology != "single":
                continue
            for count in args.daemons:
                label = f"{topology} {store} x{count}"
                results = []
                for _ in range(args.repeat):
                    r = await measure(args, topology, store, count)
                    print(fmt(label, r), flush=True)
                    results.append(r)
                summary[label.replace(" ", "_")] = median_of(results)
    print(json.dumps({"load_after": round(os.getloadavg()[0], 2), **summary}, indent=1))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)

    def listed(v: str) -> list[str]:
        return [x for x in v.split(",") if x]

    p.add_argument("--topology", type=listed, default=["single", "cluster"])
    p.add_argument("--store", type=listed, default=["kv"], help="kv, sqlite, or both")
    p.add_argument("--daemons", type=lambda v: [int(x) for x in listed(v)], default=[1, 2])
    p.add_argument("--runs", type=int, default=3000, help="runs per measurement")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--repeat", type=int, default=1, help="measurements (median reported)")
    p.add_argument(
        "--rate", type=float, default=0.0, help="starts per second (0: as fast as it goes)"
    )
    p.add_argument("--in-flight", type=int, default=256, help="start requests at once")
    p.add_argument("--concurrency", type=int, default=64, help="each daemon's workers")
    p.add_argument("--event-loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    p.add_argument("--sync", default=None, help="override sync_interval of the configs (e.g. 2m)")
    p.add_argument("--profile", type=Path, help="py-spy each daemon into this directory")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured")
    p.add_argument("--tap", action="store_true", help="count messages by subject (slows)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per batch")
    args = p.parse_args()
    for t in args.topology:
        if t not in ("single", "cluster"):
            p.error(f"--topology: single or cluster, not {t!r}")
    for s in args.store:
        if s not in ("kv", "sqlite"):
            p.error(f"--store: kv or sqlite, not {s!r}")
    return args


if __name__ == "__main__":
    anyio.run(main, parse())
