"""A refused write stops the slice even when user code catches every ``Exception``: a
fenced-out worker must not go on running steps (and their side effects) that the run's
new owner will run again."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import pytest

import stemd
from tests.helpers import open_app, wait_until

pytestmark = pytest.mark.anyio


async def test_a_script_swallowing_exceptions_stops_at_its_first_refused_checkpoint() -> None:
    """Cancelled while a step runs, a script that catches Exception around its steps runs
    no further step once the step's checkpoint is refused."""
    entered = anyio.Event()
    gate = anyio.Event()
    done: list[int] = []

    async def item(i: int) -> int:
        if i == 0:
            entered.set()
            await gate.wait()
        done.append(i)
        return i

    @stemd.script("swallow.all")
    async def swallow(ctx: stemd.ScriptContext, params: Any) -> int:
        ok = 0
        for i in range(5):
            try:
                await ctx.step("item", item, i)
                ok += 1
            except Exception:  # the user code under test swallows every error
                continue
        return ok

    # A long lease: the lease keeper would only notice the loss much later.
    async with open_app(swallow, lease=300.0) as app:
        run_id = await app.start_workflow("swallow.all")
        await entered.wait()
        assert await app.cancel_run(run_id, reason="stop")
        gate.set()

        async def idle() -> bool:
            assert app.pool is not None
            return app.pool.statistics().busy == 0

        await wait_until(idle, what="the slice to end")
        state = await app.get_run(run_id)
        assert state is not None and state.status is stemd.RunStatus.CANCELLED
        assert state.checkpoints == {}
    assert done == [0]


async def test_a_flow_step_swallowing_exceptions_stops_at_a_refused_child_start() -> None:
    """A flow step that catches Exception around start_child stops when the write that
    records the child is refused: no child is started by a fenced-out worker."""
    entered = anyio.Event()
    gate = anyio.Event()
    after: list[str] = []
    flow = stemd.Flow("swallow.flow")
    child = stemd.Flow("swallow.child")

    @child.step("only")
    async def only(ctx: stemd.FlowContext) -> str:
        return "child"

    @flow.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> str:
        entered.set()
        await gate.wait()
        with contextlib.suppress(Exception):  # the user code under test swallows errors
            await ctx.start_child("swallow.child")
        after.append("went on")
        return "spawned"

    async with open_app(flow, child, lease=300.0) as app:
        run_id = await app.start_workflow("swallow.flow")
        await entered.wait()
        assert await app.cancel_run(run_id, reason="stop")
        gate.set()

        async def idle() -> bool:
            assert app.pool is not None
            return app.pool.statistics().busy == 0

        await wait_until(idle, what="the slice to end")
        assert await app.list_runs(workflow="swallow.child") == []
    assert after == []
