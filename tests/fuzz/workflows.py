"""Workflows of the fuzz tests' daemon (loaded through the config's ``modules``)."""

from __future__ import annotations

from typing import Any

import stemd

echo = stemd.Flow("fuzz.echo")


@echo.step("echo")
async def echo_step(ctx: stemd.FlowContext) -> Any:
    """Returns its params."""
    return ctx.params


wait = stemd.Flow("fuzz.wait")


@wait.step("wait")
async def wait_step(ctx: stemd.FlowContext) -> Any:
    """Waits for an event on ``fuzz.topic`` (no timeout)."""
    return await ctx.wait_for_event("fuzz.topic")


@wait.step("done")
async def done_step(ctx: stemd.FlowContext) -> Any:
    """Returns the event's payload."""
    return {"got": ctx.previous_result}
