"""A refused or failed write stops the slice even when user code catches every
``Exception``: a fenced-out worker must not go on running steps (and their side effects)
that the run's new owner will run again, and a store outage met inside user code must not
become the run's failure."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import pytest

import stemd
from stemd._errors import StoreError
from stemd._store.memory import MemoryStore
from tests.helpers import open_app, wait_until

pytestmark = pytest.mark.anyio


async def test_a_script_swallowing_exceptions_stops_at_its_first_refused_checkpoint() -> None:
    """A cancelled script swallowing exceptions runs no step after its refused checkpoint."""
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
    async with open_app(swallow, options=stemd.AppOptions(timing=stemd.Timing(lease=300.0))) as app:
        run_id = await app.start_workflow("swallow.all")
        await entered.wait()
        assert await app.cancel_run(run_id, reason="stop")
        gate.set()

        async def idle() -> bool:
            assert app.pool is not None
            return app.pool.statistics().busy == 0

        await wait_until(idle, what="the slice to end")
        state = await app.get_run(run_id)
        assert state is not None
        assert state.status is stemd.RunStatus.CANCELLED
        assert state.checkpoints == {}
    assert done == [0]


async def test_a_flow_step_swallowing_exceptions_stops_at_a_refused_child_start() -> None:
    """A fenced-out flow step that swallows exceptions starts no child."""
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

    async with open_app(
        flow, child, options=stemd.AppOptions(timing=stemd.Timing(lease=300.0))
    ) as app:
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


class _FlakyStore(MemoryStore):
    """A memory store whose first checkpoint write fails as a store outage would."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("the database is locked")
        await super().save_checkpoint(*args, **kwargs)


async def test_a_store_outage_inside_a_script_abandons_the_slice_not_the_run() -> None:
    """A store outage inside a script's try/except retries the slice, not fails the run."""
    ran: list[str] = []

    async def first() -> str:
        ran.append("first")
        return "one"

    @stemd.script("outage.script")
    async def script(ctx: stemd.ScriptContext, params: Any) -> str:
        try:
            value = await ctx.step("first", first)
        except Exception as exc:  # the user code under test handles its own errors
            return f"gave up: {exc}"
        return value

    async with open_app(script, store=_FlakyStore()) as app:
        run_id = await app.start_workflow("outage.script")
        result = await app.wait_for_completion(run_id, timeout=10)
    assert result.is_completed, result
    assert result.value == "one", result
    assert ran == ["first", "first"]
