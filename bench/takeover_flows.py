"""The workflow of bench/takeover.py (loaded by the daemons it starts): one step that
records which process started it, then holds for a minute, and a second step."""

from __future__ import annotations

import os

import anyio

import stemd

held = stemd.Flow("bench.held")


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@held.step("hold")
async def hold(ctx: stemd.FlowContext) -> str:
    """Records ``start <pid>``, then holds for ``params["hold"]`` seconds."""
    _append(ctx.params["file"], f"start {os.getpid()}")
    await anyio.sleep(float(ctx.params.get("hold", 60)))
    return "held"


@held.step("after")
async def after(ctx: stemd.FlowContext) -> str:
    """Records ``after <pid>``."""
    _append(ctx.params["file"], f"after {os.getpid()}")
    return "after"
