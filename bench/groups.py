"""Group operations at scale: pause, then resume, every run of a workflow, N runs waiting
for an event, from a client App (no workers), on the KV store or a SQLite file.

    python bench/groups.py --runs 10000 --store kv
    python bench/groups.py --runs 10000 --store sqlite
    python bench/compare.py HEAD~1 HEAD --rounds 3 -- bench/groups.py --runs 10000 --store kv

The runs are started by a daemon App (64 workers) and left waiting (SUSPENDED on a topic);
then a second App, a client, times a dry run (``preview``: the count a pause would
change), ``pause_runs(workflow=...)`` and ``resume_runs(workflow=...)``. Prints one line
and a JSON summary (seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

# Keep bench/ itself off the path (bench/nats.py would shadow nats-py); the root last, so
# that bench/compare.py's PYTHONPATH (an older revision's checkout) comes first.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.append(str(_HERE.parent))

import stemd  # noqa: E402
from stemd._engine.groups import GroupFilter, Groups  # noqa: E402
from stemd.testing._nats import nats_server  # noqa: E402


@stemd.script("bench.group_waiter")
async def waiter(ctx: stemd.ScriptContext) -> Any:
    """Waits for an event that never comes."""
    return await ctx.wait_for_event("bench.group_go")


async def fill(url: str, broker: str | None, runs: int) -> None:
    """Start ``runs`` waiters and return once all of them wait."""
    async with stemd.App(store=url, broker=broker, workflows=[waiter], concurrency=64) as app:
        limit = anyio.Semaphore(256)

        async def start(i: int) -> None:
            async with limit:
                await app.start_run("bench.group_waiter", run_id=f"w{i}")

        async with anyio.create_task_group() as tg:
            for i in range(runs):
                tg.start_soon(start, i)
        with anyio.fail_after(600):
            while True:
                page = await app.page_runs(
                    workflow="bench.group_waiter", status="suspended", limit=runs
                )
                if len(page.runs) >= runs:
                    return
                await anyio.sleep(0.5)


async def measure(url: str, runs: int) -> dict[str, float]:
    """Time a dry run, the pause and the resume from a client App."""
    out: dict[str, float] = {}
    async with stemd.App(store=url, workflows=[waiter], workers=False) as client:
        selected = GroupFilter(workflow="bench.group_waiter")
        t = time.perf_counter()
        count, _ = await Groups(client.engine).preview("pause", selected, 10)
        out["preview_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        paused = await client.pause_runs(workflow="bench.group_waiter")
        out["pause_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        resumed = await client.resume_runs(workflow="bench.group_waiter")
        out["resume_s"] = round(time.perf_counter() - t, 3)
    if not count == paused == resumed == runs:
        raise SystemExit(
            f"expected {runs} each: preview {count}, paused {paused}, resumed {resumed}"
        )
    return out


async def main(args: argparse.Namespace) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if args.store == "kv":
            server = await stack.enter_async_context(nats_server())
            url, broker = f"{server.url}?bucket=groups", server.url
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="stemd-groups-"))
            url, broker = f"sqlite:///{tmp}/groups.db", None
        await fill(url, broker, args.runs)
        out = await measure(url, args.runs)
    print(
        f"{args.store}: {args.runs:,} runs: dry run {out['preview_s']:.2f} s, "
        f"pause {out['pause_s']:.2f} s, resume {out['resume_s']:.2f} s",
        flush=True,
    )
    print(json.dumps(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--store", choices=("kv", "sqlite"), default="kv")
    anyio.run(main, parser.parse_args())
