"""A parent that starts child workflows and waits for each: fan-out, fan-in.

Start it with params ``{"numbers": [1, 2, 3]}``: one ``examples.square`` child per number;
the result is the children's ids and the sum of their squares. Starting a child is
checkpointed, so a resumed parent never starts a second one.
"""

from __future__ import annotations

from typing import Any

import msgspec

import stemd

square = stemd.Flow("examples.square")


@square.step("compute")
async def compute(ctx: stemd.FlowContext) -> int:
    n: int = ctx.params["n"]
    return n * n


class FanoutParams(msgspec.Struct, kw_only=True):
    """The parent's params, decoded from the run's JSON object."""

    numbers: list[int] = msgspec.field(default_factory=lambda: [1, 2, 3])


@stemd.script("examples.fanout")
async def fanout(ctx: stemd.ScriptContext, params: FanoutParams) -> dict[str, Any]:
    children = [await ctx.start_child("examples.square", {"n": n}) for n in params.numbers]
    squares = [await ctx.wait_child(child, type=int) for child in children]
    return {"children": children, "total": sum(squares)}
