"""rewind_run: re-run a run from a step on (contract §2)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus


def _counting_flow(name: str, calls: Counter[str]) -> stemd.Flow:
    flow = stemd.Flow(name)

    async def run(ctx: stemd.FlowContext) -> Any:
        calls[ctx.step_name] += 1
        return f"{ctx.step_name}{calls[ctx.step_name]}"

    for step in ("a", "b", "c"):
        flow.step(step)(run)
    return flow


async def test_rewind_re_runs_that_step_and_later_ones_only() -> None:
    """Rewinding a completed run to a step re-runs it and the later steps, at once."""
    calls = Counter[str]()
    flow = _counting_flow("rewind.flow", calls)
    clock = ManualClock()
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        first = await app.wait_for_completion(run_id, timeout=5)
        assert first.value == "c1"
        assert await app.rewind_run(run_id, "b") is True
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "c2"
    assert calls == {"a": 1, "b": 2, "c": 2}
    assert result.state is not None
    assert result.state.checkpoints == {"a": "a1", "b": "b2", "c": "c2"}


async def test_rewind_a_failed_run_after_fixing_the_cause() -> None:
    """A failed run rewound to its failing step runs again from there and can complete."""
    broken = True
    calls = Counter[str]()
    flow = stemd.Flow("fix.flow")

    @flow.step("setup")
    async def setup(ctx: stemd.FlowContext) -> int:
        calls["setup"] += 1
        return 1

    @flow.step("work")
    async def work(ctx: stemd.FlowContext) -> int:
        calls["work"] += 1
        if broken:
            raise RuntimeError("bug")
        return ctx.previous_result + 1

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        assert (await app.wait_for_completion(run_id, timeout=5)).is_failed
        broken = False
        assert await app.rewind_run(run_id, "work")
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == 2
    assert result.error is None
    assert calls == {"setup": 1, "work": 2}


async def test_rewind_deletes_every_occurrence_of_a_script_step() -> None:
    """Rewinding a script to `poll` deletes poll, poll#1, ... and every later checkpoint."""
    calls = Counter[str]()

    async def poll(n: int) -> int:
        calls[f"poll{n}"] += 1
        return n

    async def load() -> str:
        calls["load"] += 1
        return "loaded"

    async def done(values: list[int]) -> int:
        calls["done"] += 1
        return sum(values)

    @stemd.script("rewind.script")
    async def body(ctx: stemd.ScriptContext) -> int:
        await ctx.step("load", load)
        values = [await ctx.step("poll", poll, n) for n in range(3)]
        return await ctx.step("done", done, values)

    async with open_app(body) as app:
        run_id = await app.start_workflow(body)
        assert (await app.wait_for_completion(run_id, timeout=5)).value == 3
        assert await app.rewind_run(run_id, "poll")
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == 3
    assert calls == {"load": 1, "poll0": 2, "poll1": 2, "poll2": 2, "done": 2}


async def test_rewind_re_arms_the_step_s_own_waits() -> None:
    """A rewound step's sleeps and event waits are forgotten: it waits again."""
    calls = Counter[str]()
    flow = stemd.Flow("rearm.flow")

    @flow.step("nap")
    async def nap(ctx: stemd.FlowContext) -> str:
        calls["nap"] += 1
        await ctx.sleep(10)
        return "rested"

    @flow.step("ask")
    async def ask(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event("rearm.answer")

    clock = ManualClock()
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(10)
        await wait_until(lambda: _waiting(app, "rearm.answer", run_id), what="the event wait")
        await app.emit("rearm.answer", "first")
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "first"

        assert await app.rewind_run(run_id, "nap")
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.resume_at == clock.now() + _seconds(10)
        assert state.checkpoints == {}
        clock.advance(10)
        await wait_until(lambda: _waiting(app, "rearm.answer", run_id), what="a new wait")
        assert await app.emit("rearm.answer", "second") == 1
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "second"
    assert calls["nap"] == 4


def _seconds(n: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=n)


async def _waiting(app: stemd.App, topic: str, run_id: str) -> bool:
    return run_id in {s.run_id for s in await app.runs_waiting_on(topic)}


async def test_rewind_a_waiting_run_stops_its_wait() -> None:
    """A run rewound while it waits for an event leaves the wait and re-runs from the step."""
    calls = Counter[str]()
    flow = stemd.Flow("rewind-wait.flow")

    @flow.step("a")
    async def a(ctx: stemd.FlowContext) -> int:
        calls["a"] += 1
        return calls["a"]

    @flow.step("b")
    async def b(ctx: stemd.FlowContext) -> Any:
        calls["b"] += 1
        return await ctx.wait_for_event("rewind-wait.go")

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.rewind_run(run_id, "a")
        await wait_until(lambda: _entered(calls, "b", 2), what="b to run again")
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.checkpoints == {"a": 2}
        assert await app.emit("rewind-wait.go", "x") == 1
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "x"
    assert calls == {"a": 2, "b": 3}


async def _entered(calls: Counter[str], step: str, n: int) -> bool:
    return calls[step] >= n


async def test_rewind_to_an_unknown_step_changes_nothing() -> None:
    """Rewinding to a step the run does not have raises StepNotFound and changes nothing."""
    calls = Counter[str]()
    flow = _counting_flow("rewind-unknown.flow", calls)
    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        before = await app.wait_for_completion(run_id, timeout=5)
        with pytest.raises(stemd.StepNotFound):
            await app.rewind_run(run_id, "zzz")
        with pytest.raises(stemd.StemError):
            await app.rewind_run(run_id, "")
        after = await app.get_run(run_id)
    assert after is not None
    assert before.state is not None
    assert after.status is RunStatus.COMPLETED
    assert after.checkpoints == before.state.checkpoints
    assert calls == {"a": 1, "b": 1, "c": 1}


async def test_rewind_needs_a_step_name() -> None:
    """Rewinding to an empty or internal name (a script body's waits) is StepNotFound."""

    @stemd.script("rewind-body.script")
    async def body(ctx: stemd.ScriptContext) -> str:
        await ctx.sleep(0.5)
        return await ctx.step("s", _constant)

    clock = ManualClock()
    async with open_app(body, clock=clock) as app:
        run_id = await app.start_workflow(body)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(1)
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "const"
        for step in ("", "@sleep", "@sleep#0", "s#0"):
            with pytest.raises(stemd.StepNotFound):
                await app.rewind_run(run_id, step)
        state = await app.get_run(run_id)
    assert state is not None
    assert state.status is RunStatus.COMPLETED


async def _constant() -> str:
    return "const"


async def test_rewind_of_an_unknown_run() -> None:
    """Rewinding a run that does not exist returns False; an invalid id is rejected."""
    async with open_app(_counting_flow("rewind-none.flow", Counter())) as app:
        assert await app.rewind_run("no-such-run", "a") is False
        with pytest.raises(stemd.StemError):
            await app.rewind_run("bad id!", "a")
