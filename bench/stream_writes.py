"""How many acknowledged writes per second one JetStream stream takes, and what each costs
nats-server: the ceiling of a KV bucket (one stream) whatever the number of daemons.

    python bench/stream_writes.py                          # single and cluster, as shipped and 2m
    python bench/stream_writes.py --topology cluster --streams 1,2,3 --writes 30000

Starts the shipped NATS configs on free loopback ports (as bench/scale.py does; with
``sync_interval`` as shipped, ``always``, and with ``2m``), creates ``--streams`` streams
(one message kept per subject, like a KV bucket; R3 in the cluster) and has ``--clients``
processes publish ``--writes`` 300-byte messages in all, ``--in-flight`` each at once,
spread over the streams and over 5,000 subjects each. Prints writes/s and the servers'
CPU microseconds per write (user + system, all nodes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

from bench.daemons import cpu_seconds  # noqa: E402
from bench.scale import CLUSTER, SINGLE, nats_nodes  # noqa: E402
from stemd._errors import TransportError  # noqa: E402
from stemd._natsconn import open_connection  # noqa: E402


async def write(url: str, streams: int, count: int, in_flight: int, offset: int) -> None:
    """Publish ``count`` messages, ``in_flight`` at once, round robin over the streams."""
    conn = await open_connection(url, name="bench-writes", timeout=10)
    limit = anyio.Semaphore(in_flight)
    body = b"x" * 300

    async def one(i: int) -> None:
        async with limit:
            await conn.js_publish(f"w{i % streams}.k{(offset + i) % 5000}", body, timeout=30)

    began = time.perf_counter()
    try:
        async with anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, i)
    finally:
        await conn.close()
    print(time.perf_counter() - began, flush=True)  # seconds spent writing, for the parent


def writers(args: argparse.Namespace, urls: list[str], streams: int, each: int) -> float:
    """Run the writer processes (one per client, round robin over the nodes) to the end;
    the longest time one spent writing (their start-up left out)."""
    procs = []
    for i in range(args.clients):
        numbers = [str(streams), str(each), str(args.in_flight), str(i * each)]
        cmd = [sys.executable, __file__, "--child", urls[i % len(urls)], *numbers]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    spent = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit("a writer failed")
        spent.append(float(out.split()[-1]))
    return max(spent)


async def measure(args: argparse.Namespace, topology: str, sync: str, streams: int) -> float:
    configs = SINGLE if topology == "single" else CLUSTER
    with tempfile.TemporaryDirectory(prefix="stemd-writes-") as tmp:
        async with nats_nodes(configs, Path(tmp), None if sync == "as shipped" else sync) as nodes:
            conn = await open_connection(nodes[0].url, name="bench-setup", timeout=10)
            try:
                for j in range(streams):
                    config = {
                        "name": f"W{j}",
                        "subjects": [f"w{j}.>"],
                        "num_replicas": len(nodes),
                        "max_msgs_per_subject": 1,
                    }
                    with anyio.fail_after(60):  # a new cluster may time out at first
                        while True:
                            try:
                                await conn.ensure_stream(config)
                                break
                            except TransportError:
                                await anyio.sleep(0.5)
            finally:
                await conn.close()
            cpu0 = sum(cpu_seconds(n.pid or 0) for n in nodes)
            each = args.writes // args.clients
            elapsed = await anyio.to_thread.run_sync(
                writers, args, [n.url for n in nodes], streams, each
            )
            cpu = sum(cpu_seconds(n.pid or 0) for n in nodes) - cpu0
    rate = each * args.clients / elapsed
    print(
        f"{topology:8} sync {sync:10} streams {streams}: {rate:8.0f} writes/s  "
        f"server CPU {cpu * 1e6 / (each * args.clients):5.0f} us/write",
        flush=True,
    )
    return round(rate)


async def main(args: argparse.Namespace) -> None:
    summary: dict[str, int] = {}
    for topology in args.topology:
        for sync in args.sync:
            for streams in args.streams:
                rate = await measure(args, topology, sync, streams)
                summary[f"{topology}_{sync.replace(' ', '_')}_{streams}"] = rate
    print(json.dumps(summary))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        url, streams, count, in_flight, offset = sys.argv[2:7]
        anyio.run(write, url, int(streams), int(count), int(in_flight), int(offset))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topology", type=lambda v: v.split(","), default=["single", "cluster"])
    parser.add_argument("--sync", type=lambda v: v.split(","), default=["as shipped", "2m"])
    parser.add_argument("--streams", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2])
    parser.add_argument("--writes", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=256)
    anyio.run(main, parser.parse_args())
