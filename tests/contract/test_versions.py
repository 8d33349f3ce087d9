"""Safe evolution (issue 13): versions registered side by side, each run executed by the
version it started with, new runs on the newest; ``ctx.patched`` for changes inside one
version. On every store: the version is part of the stored run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_until

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio

START = datetime(2030, 1, 1, tzinfo=UTC)
RunStatus = stemd.RunStatus


async def _waiting(app: stemd.App, topic: str, run_id: str) -> bool:
    state = await app.get_run(run_id)
    return state is not None and state.status is RunStatus.SUSPENDED and state.wait_topic == topic


def _order_flow(version: int, label: str) -> stemd.Flow:
    flow = stemd.Flow("ver.order", version=version)

    @flow.step("receive")
    async def receive(ctx: stemd.FlowContext) -> str:
        return await ctx.wait_for_event("ver.order.go")

    @flow.step(label)
    async def finish(ctx: stemd.FlowContext) -> str:
        return f"{ctx.previous_result} by v{version}"

    return flow


async def test_each_run_keeps_the_version_it_started_with(store: Store) -> None:
    """A run started on version 1 is executed by version 1 while version 2 takes new runs;
    a process without version 1 gives the old run back until one with it takes it."""
    clock = ManualClock(START)
    v1, v2 = _order_flow(1, "ship"), _order_flow(2, "pack")
    async with open_app(v1, store=store, clock=clock) as app:
        old = await app.start_workflow("ver.order")
        await wait_until(_waiting, app, "ver.order.go", old, what="the old run's wait")
        assert (await app.get_run(old)).version == 1  # type: ignore[union-attr]
    async with open_app(v2, store=store, clock=clock) as app:
        assert await app.emit("ver.order.go", "a") == 1
        await wait_until(_unknown, app, old, what="the old run to be given back")
    async with open_app(v2, v1, store=store, clock=clock) as app:
        new = await app.start_workflow("ver.order")
        clock.advance(5)
        done = await app.wait_for_completion(old, timeout=5)
        await wait_until(_waiting, app, "ver.order.go", new, what="the new run's wait")
        assert await app.emit("ver.order.go", "b") == 1
        fresh = await app.wait_for_completion(new, timeout=5)
    assert done.value == "a by v1"
    assert fresh.value == "b by v2"
    assert fresh.state.version == 2
    assert "pack" in fresh.state.checkpoints
    assert "ship" in done.state.checkpoints


async def _unknown(app: stemd.App, run_id: str) -> bool:
    state = await app.get_run(run_id)
    return state is not None and state.error is not None and "version 1" in state.error.message


def test_two_definitions_of_one_name_and_version_are_refused() -> None:
    """Registering two definitions with the same name and version is refused; two versions
    of one name are registered side by side, the newest serving new runs."""
    with pytest.raises(ValueError, match="two workflows"):
        stemd.App(workflows=[_order_flow(1, "a"), _order_flow(1, "b")])
    app = stemd.App(workflows=[_order_flow(10, "a"), _order_flow(9, "b")])
    assert app.workflows["ver.order"].version == 10
    with pytest.raises(ValueError, match="version"):
        stemd.Flow("ver.bad", version=1.5)  # type: ignore[arg-type]


def _checkout(patched: bool, calls: list[str]) -> stemd.Script:
    @stemd.script("ver.checkout")
    async def checkout(ctx: stemd.ScriptContext) -> list[Any]:
        out: list[Any] = [await ctx.step("reserve", _record, calls, "reserve")]
        if patched and ctx.patched("fraud-check"):
            out.append(await ctx.step("fraud", _record, calls, "fraud"))
        out.append(await ctx.wait_for_event("ver.checkout.go"))
        out.append(await ctx.step("charge", _record, calls, "charge"))
        return out

    return checkout


async def _record(calls: list[str], what: str) -> str:
    calls.append(what)
    return what


async def test_patched_is_false_for_runs_past_the_change_and_true_for_the_others(
    store: Store,
) -> None:
    """ctx.patched is False for a run that went past that point before the change, True
    (and recorded, so again True on replay) for runs that reach it after."""
    clock = ManualClock(START)
    calls: list[str] = []
    async with open_app(_checkout(False, calls), store=store, clock=clock) as app:
        old = await app.start_workflow("ver.checkout")
        await wait_until(_waiting, app, "ver.checkout.go", old, what="the old run's wait")
    async with open_app(_checkout(True, calls), store=store, clock=clock) as app:
        new = await app.start_workflow("ver.checkout")
        await wait_until(_waiting, app, "ver.checkout.go", new, what="the new run's wait")
        assert await app.emit("ver.checkout.go", "go") == 2
        before = await app.wait_for_completion(old, timeout=5)
        after = await app.wait_for_completion(new, timeout=5)
    assert before.value == ["reserve", "go", "charge"]
    assert after.value == ["reserve", "fraud", "go", "charge"]
    assert calls.count("fraud") == 1
    assert [e.name for e in after.state.timeline][:3] == ["reserve", "@patch#0", "fraud"]
