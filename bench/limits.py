"""The cost of flow control: throughput of the embedded App on SQLite (fsync on) with a
3-step flow, unlimited, with a workflow concurrency limit, with a per-key limit, and with a
rate limit (starts per second).

    python bench/limits.py --runs 2000 --limit 8 --keys 50 --rate 200

Each measurement opens a fresh App on a new SQLite file; ``--runs`` runs are started by
``--clients`` tasks and executed by ``--concurrency`` workers, timed from the first start
to the last completion. A limited run takes a slot (a store transaction) at each claim
and frees it at its commit, and a run that finds no slot free waits and tries again: the
limited numbers are the throughput under the limit, not only its bookkeeping. A run of the
rate-limited workflow takes a slot of the rate at its start (held for the window) and one
over the rate is held back to try again within the window: its throughput is bounded by
``--rate`` (``rate_ratio`` is the share of the rate reached).

Prints one line per measurement and a JSON summary at the end.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stemd


async def _step(n: int) -> int:
    return n + 1


def _flow(name: str, limits: stemd.Limits | None) -> stemd.Flow[Any, Any]:
    flow: stemd.Flow[Any, Any] = stemd.Flow(name, limits=limits)
    for step in ("one", "two", "three"):

        @flow.step(step)
        async def run(ctx: stemd.FlowContext) -> int:
            return await _step(0)

    return flow


async def measure(
    flow: stemd.Flow[Any, Any], runs: int, clients: int, concurrency: int, keys: int
) -> dict[str, Any]:
    """Start ``runs`` runs of ``flow``; time until every one ended."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        options = stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.2))
        async with stemd.App(
            store=url, workflows=[flow], concurrency=concurrency, options=options
        ) as app:
            finished = 0
            done = anyio.Event()

            def on_event(event: Any, raw: bytes | None) -> None:
                nonlocal finished
                if event.workflow == flow.name and event.status.is_terminal:
                    finished += 1
                    if finished == runs:
                        done.set()

            stop = app.engine.events.listen(on_event)

            async def client(first: int) -> None:
                for i in range(first, runs, clients):
                    await app.start_workflow(flow, {"key": f"k{i % keys}"})

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for c in range(clients):
                    tg.start_soon(client, c)
            with anyio.fail_after(900):
                await done.wait()
            elapsed = time.perf_counter() - started
            stop()
    return {
        "runs": runs,
        "seconds": round(elapsed, 3),
        "workflows_per_s": round(runs / elapsed, 1),
        "steps_per_s": round(3 * runs / elapsed, 1),
    }


async def main(args: argparse.Namespace) -> None:
    """Measure each variant, print a line each and the JSON summary."""
    variants = {
        "unlimited": None,
        f"concurrency_{args.limit}": stemd.Limits(concurrency=args.limit),
        f"key_1_of_{args.keys}_keys": stemd.Limits(key=lambda p: p["key"], key_concurrency=1),
        f"rate_{args.rate}_per_s": stemd.Limits(rate=args.rate, per=1.0),
    }
    results: dict[str, Any] = {"concurrency": args.concurrency}
    for name, limits in variants.items():
        result = await measure(
            _flow(f"bench.limits.{name}", limits),
            args.runs,
            args.clients,
            args.concurrency,
            args.keys,
        )
        if limits is not None and limits.rate is not None:
            result["rate_ratio"] = round(result["workflows_per_s"] / limits.rate, 3)
        results[name] = result
        print(f"{name:>22}: {result['workflows_per_s']:8.1f} workflows/s", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--limit", type=int, default=8, help="the workflow concurrency limit")
    parser.add_argument("--keys", type=int, default=50, help="distinct keys (limit 1 each)")
    parser.add_argument("--rate", type=int, default=200, help="starts per second (rate limit)")
    anyio.run(main, parser.parse_args())
