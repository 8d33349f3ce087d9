"""Workflows the benchmark daemons run (``modules = ["bench.workflows"]``, with the
repository root on PYTHONPATH)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import Any

import stemd


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def woke(path: str, at: float, *, context: stemd.StepContext) -> float:
    """Record how late the run woke: now minus the wake time it asked for."""
    late = time.time() - at
    _append(path, f"{context.run_id} {late:.6f}\n")
    return late


@stemd.script("bench.sleeper")
async def sleeper(ctx: stemd.ScriptContext, params: dict[str, Any]) -> float:
    """Sleeps until ``at`` (epoch seconds), then records its lateness in ``file``."""
    at = float(params["at"])
    await ctx.sleep_until(datetime.fromtimestamp(at, tz=UTC))
    late: float = await ctx.step("woke", woke, params["file"], at)
    return late


soak = stemd.Flow("bench.soak")


@soak.step("one")
async def one(ctx: stemd.FlowContext) -> int:
    return 1


@soak.step("nap")
async def nap(ctx: stemd.FlowContext) -> int:
    await ctx.sleep(float(ctx.params.get("sleep", 0.2)))
    return int(ctx.previous_result) + 1


@soak.step("three")
async def three(ctx: stemd.FlowContext) -> int:
    """Records the run's end in ``file`` (a re-run after a crash records it twice)."""
    if "file" in ctx.params:
        _append(ctx.params["file"], f"{ctx.run_id}\n")
    return int(ctx.previous_result) + 1


# The 3-step flow with trivial steps that bench/embedded.py and bench/nats.py measure.
three_steps = stemd.Flow("bench.flow")


@three_steps.step("one")
async def first(ctx: stemd.FlowContext) -> int:
    return 1


@three_steps.step("two")
async def second(ctx: stemd.FlowContext) -> int:
    return int(ctx.previous_result) + 1


@three_steps.step("three")
async def third(ctx: stemd.FlowContext) -> int:
    return int(ctx.previous_result) + 1
