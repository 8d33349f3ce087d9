"""A step that fails, then succeeds: each failure schedules a durable retry after a backoff.

Params (optional): ``{"fail_times": N}``, the attempts that fail before one succeeds (2).
With ``fail_times`` of 5 or more, the attempts run out and the run ends FAILED with the
error's type and message recorded.
"""

from __future__ import annotations

from typing import Any

import stemd

flaky = stemd.Flow("examples.flaky")


@flaky.step("fetch", retry=stemd.Retry(max_attempts=5, backoff=0.05, max_backoff=1.0))
async def fetch(ctx: stemd.FlowContext) -> dict[str, Any]:
    """Fails while ``ctx.attempt`` is at most ``fail_times``."""
    params = ctx.params if isinstance(ctx.params, dict) else {}
    fail_times = int(params.get("fail_times", 2))
    if ctx.attempt <= fail_times:
        raise ConnectionError(f"upstream unavailable (attempt {ctx.attempt})")
    return {"attempts": ctx.attempt}


@flaky.step("report")
async def report(ctx: stemd.FlowContext) -> str:
    return f"fetched after {ctx.previous_result['attempts']} attempts"
