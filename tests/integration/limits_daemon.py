"""A daemon for the flow-control tests: ``python limits_daemon.py STORE_URL EFFECTS NAME``.

It serves ``limits.work`` (at most 3 runs at once across every daemon, 1 per customer) and
``limits.rated`` (at most 4 starts per second across every daemon) with a 2 s lease,
prints ``READY`` once up, and runs until killed. Each step appends ``start|end NAME RUN_ID
CUSTOMER TIME`` to EFFECTS around 0.3 s of work (CUSTOMER ``rated`` for ``limits.rated``).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import anyio

import stemd


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def _work(path: str, name: str, run_id: str, customer: str) -> str:
    _append(path, f"start {name} {run_id} {customer} {time.time():.6f}")
    await anyio.sleep(0.3)
    _append(path, f"end {name} {run_id} {customer} {time.time():.6f}")
    return customer


@stemd.script(
    "limits.work",
    limits=stemd.Limits(concurrency=3, key=lambda p: p["customer"], key_concurrency=1),
)
async def work(ctx: stemd.ScriptContext, params: dict[str, Any]) -> str:
    """One step of 0.3 s, recorded in the effects file."""
    return await ctx.step("work", _work, params["file"], NAME, ctx.run_id, params["customer"])


@stemd.script("limits.rated", limits=stemd.Limits(rate=4, per=1.0))
async def rated(ctx: stemd.ScriptContext, params: dict[str, Any]) -> str:
    """The same step, in a workflow limited to 4 starts per second."""
    return await ctx.step("work", _work, params["file"], NAME, ctx.run_id, "rated")


NAME = sys.argv[3] if len(sys.argv) > 3 else "test"


async def main(url: str) -> None:
    """Serve until killed."""
    nats = url.startswith("nats://")
    options = stemd.AppOptions(timing=stemd.Timing(lease=2.0, sweep_interval=0.1), owner=NAME)
    async with stemd.App(
        store=url, broker=url if nats else None, workflows=[work, rated], options=options
    ) as app:
        print("READY", flush=True)
        await app.serve_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
