"""fork_run: a new run from an existing run's checkpoints before a step (issue 13), on
every store."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

import stemd

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio


def _flow(calls: Counter[str]) -> stemd.Flow:
    flow = stemd.Flow("fork.flow")

    async def run(ctx: stemd.FlowContext) -> Any:
        calls[ctx.step_name] += 1
        return f"{ctx.step_name}{calls[ctx.step_name]}:{ctx.params['n']}"

    for name in ("a", "b", "c"):
        flow.step(name)(run)
    return flow


async def test_fork_runs_from_the_step_with_the_earlier_checkpoints_and_leaves_the_original(
    store: Store,
) -> None:
    """The fork keeps the checkpoints before the step, re-runs that step and the later
    ones in a new run with the same params; the original run is not changed."""
    calls = Counter[str]()
    flow = _flow(calls)
    async with stemd.App(store=store, workflows=[flow]) as app:
        original = await app.start_workflow(flow, {"n": 1})
        assert (await app.wait_for_completion(original, timeout=5)).value == "c1:1"
        before = await app.get_run(original)
        forked = await app.fork_run(original, "b")
        result = await app.wait_for_completion(forked, timeout=5)
        after = await app.get_run(original)
    assert forked != original
    assert result.is_completed
    assert result.state is not None
    assert result.state.checkpoints == {"a": "a1:1", "b": "b2:1", "c": "c2:1"}
    assert result.state.params == {"n": 1}
    assert calls == {"a": 1, "b": 2, "c": 2}
    assert before is not None
    assert after is not None
    assert after.checkpoints == before.checkpoints == {"a": "a1:1", "b": "b1:1", "c": "c1:1"}
    assert after.status is stemd.RunStatus.COMPLETED


async def test_fork_of_a_script_keeps_the_checkpoints_before_the_step(store: Store) -> None:
    """A script run forked at a step replays the earlier checkpoints without running
    them and runs that step and what follows."""
    calls = Counter[str]()

    async def work(name: str) -> str:
        calls[name] += 1
        return f"{name}{calls[name]}"

    @stemd.script("fork.script")
    async def body(ctx: stemd.ScriptContext, params: Any) -> list[str]:
        return [await ctx.step(n, work, n) for n in ("x", "y", "z")]

    async with stemd.App(store=store, workflows=[body]) as app:
        original = await app.start_workflow(body)
        assert (await app.wait_for_completion(original, timeout=5)).value == ["x1", "y1", "z1"]
        forked = await app.fork_run(original, "y")
        result = await app.wait_for_completion(forked, timeout=5)
    assert result.value == ["x1", "y2", "z2"]
    assert calls == {"x": 1, "y": 2, "z": 2}


async def test_fork_of_an_unknown_run_or_step_is_an_error_and_writes_nothing(
    store: Store,
) -> None:
    """An unknown run raises RunNotFound, an unknown step StepNotFound, a bad id
    InvalidRunId; no run is created."""
    calls = Counter[str]()
    flow = _flow(calls)
    async with stemd.App(store=store, workflows=[flow]) as app:
        original = await app.start_workflow(flow, {"n": 2})
        await app.wait_for_completion(original, timeout=5)
        with pytest.raises(stemd.RunNotFound):
            await app.fork_run("no-such-run", "a")
        with pytest.raises(stemd.StepNotFound):
            await app.fork_run(original, "nope")
        with pytest.raises(stemd.InvalidRunId):
            await app.fork_run("bad id!", "a")
        runs = await app.list_runs()
    assert [r.run_id for r in runs] == [original]


async def test_fork_of_a_failed_run_after_the_fix_completes(store: Store) -> None:
    """A failed run forked at its failing step, once the cause is fixed, completes in the
    new run while the original stays failed."""
    broken = True
    flow = stemd.Flow("fork.fix")

    @flow.step("setup")
    async def setup(ctx: stemd.FlowContext) -> int:
        return 41

    @flow.step("work")
    async def work(ctx: stemd.FlowContext) -> int:
        if broken:
            raise RuntimeError("bug")
        return int(ctx.previous_result) + 1

    async with stemd.App(store=store, workflows=[flow]) as app:
        original = await app.start_workflow(flow)
        assert (await app.wait_for_completion(original, timeout=5)).is_failed
        broken = False
        forked = await app.fork_run(original, "work")
        result = await app.wait_for_completion(forked, timeout=5)
        still = await app.get_run(original)
    assert result.value == 42
    assert still is not None
    assert still.status is stemd.RunStatus.FAILED
