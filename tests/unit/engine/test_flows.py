"""Flows: declared steps run in order, each checkpointed once (contract §1.1)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest

import stemd
from stemd._store.memory import MemoryStore
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus


async def test_steps_run_in_declaration_order() -> None:
    """Steps run in the order they were declared, each seeing the previous step's result."""
    order: list[str] = []
    flow = stemd.Flow("order.flow")

    @flow.step("first")
    async def first(ctx: stemd.FlowContext) -> int:
        order.append("first")
        assert ctx.previous_result is None
        return 1

    @flow.step("second")
    async def second(ctx: stemd.FlowContext) -> int:
        order.append("second")
        return ctx.previous_result + 10

    @flow.step("third")
    async def third(ctx: stemd.FlowContext) -> int:
        order.append("third")
        return ctx.previous_result * 2

    async with open_app(flow) as app:
        run_id = await app.start_workflow("order.flow")
        result = await app.wait_for_completion(run_id, timeout=5)
    assert order == ["first", "second", "third"]
    assert result.is_completed
    assert result.value == 22
    assert result.state is not None
    assert result.state.checkpoints == {"first": 1, "second": 11, "third": 22}
    assert list(result.state.checkpoints) == ["first", "second", "third"]


async def test_step_result_is_checkpointed_before_the_next_step_starts() -> None:
    """While step two runs, step one's result is already durable in the store."""
    gate = anyio.Event()
    inside = anyio.Event()
    flow = stemd.Flow("durable.flow")

    @flow.step("one")
    async def one(ctx: stemd.FlowContext) -> str:
        return "done"

    @flow.step("two")
    async def two(ctx: stemd.FlowContext) -> str:
        inside.set()
        await gate.wait()
        return "two"

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await inside.wait()
        state = await app.get_run(run_id)
        assert state is not None
        assert state.status is RunStatus.RUNNING
        assert state.checkpoints == {"one": "done"}
        gate.set()
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "two"


async def test_completed_step_never_runs_again_across_suspensions() -> None:
    """A step that completed is not re-run when a later step suspends and resumes."""
    calls: Counter[str] = Counter()
    flow = stemd.Flow("once.flow")

    @flow.step("prepare")
    async def prepare(ctx: stemd.FlowContext) -> str:
        calls["prepare"] += 1
        return "ready"

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> Any:
        calls["wait"] += 1
        await ctx.sleep(5)
        return await ctx.wait_for_event("once.go")

    async with open_app(flow, clock=(clock := ManualClock())) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(5)
        await wait_until(
            lambda: _waiting(app, "once.go", run_id), what="the run to wait for the event"
        )
        assert await app.emit("once.go", "payload") == 1
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "payload"
    assert calls == {"prepare": 1, "wait": 3}


async def _waiting(app: stemd.App, topic: str, run_id: str) -> bool:
    return run_id in {s.run_id for s in await app.runs_waiting_on(topic)}


async def test_completed_step_never_runs_again_after_a_restart() -> None:
    """A run interrupted by shutdown resumes elsewhere without re-running completed steps."""
    calls: Counter[str] = Counter()
    may_finish = False
    entered = anyio.Event()
    flow = stemd.Flow("restart.flow")

    @flow.step("a")
    async def a(ctx: stemd.FlowContext) -> str:
        calls["a"] += 1
        return "A"

    @flow.step("b")
    async def b(ctx: stemd.FlowContext) -> str:
        calls["b"] += 1
        entered.set()
        if not may_finish:
            await anyio.sleep_forever()
        return ctx.previous_result + "B"

    store = MemoryStore()
    async with open_app(flow, store=store) as app:
        run_id = await app.start_workflow(flow)
        await entered.wait()
    # The first app shut down in the middle of "b": the run was given back, "a" is kept.
    rec = await store.get_run(run_id)
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert [c.name for c in await store.get_checkpoints(run_id)] == ["a"]
    may_finish = True
    async with open_app(flow, store=store) as app:
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "AB"
    assert calls == {"a": 1, "b": 2}
    assert result.state is not None
    assert result.state.attempts == 2


async def test_flow_context_fields() -> None:
    """FlowContext has run id, workflow, step name/index, params, previous result, attempt."""
    seen: list[dict[str, Any]] = []
    flow = stemd.Flow("ctx.flow")

    async def record(ctx: stemd.FlowContext) -> str:
        seen.append(
            {
                "run_id": ctx.run_id,
                "workflow": ctx.workflow,
                "step_name": ctx.step_name,
                "step_index": ctx.step_index,
                "params": ctx.params,
                "previous_result": ctx.previous_result,
                "attempt": ctx.attempt,
            }
        )
        return f"after-{ctx.step_name}"

    flow.step("alpha")(record)
    flow.step("beta")(record)

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow, params={"user": "ana"}, run_id="ctx-run")
        await app.wait_for_completion(run_id, timeout=5)
    common = {"run_id": "ctx-run", "workflow": "ctx.flow", "params": {"user": "ana"}, "attempt": 1}
    assert seen == [
        {**common, "step_name": "alpha", "step_index": 0, "previous_result": None},
        {**common, "step_name": "beta", "step_index": 1, "previous_result": "after-alpha"},
    ]


async def test_take_resume_data_is_the_payload_once() -> None:
    """take_resume_data returns the payload that resumed the step, once, then None."""
    taken: list[Any] = []
    flow = stemd.Flow("resume.flow")

    @flow.step("before")
    async def before(ctx: stemd.FlowContext) -> None:
        taken.append(("before", ctx.take_resume_data()))

    @flow.step("review")
    async def review(ctx: stemd.FlowContext) -> Any:
        taken.append(("entry", ctx.take_resume_data()))
        decision = await ctx.wait_for_event("resume.review")
        taken.append(("first", ctx.take_resume_data()))
        taken.append(("again", ctx.take_resume_data()))
        return decision

    @flow.step("after")
    async def after(ctx: stemd.FlowContext) -> None:
        taken.append(("after", ctx.take_resume_data()))

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.emit("resume.review", {"ok": True}) == 1
        await app.wait_for_completion(run_id, timeout=5)
    assert taken == [
        ("before", None),
        ("entry", None),
        ("entry", {"ok": True}),
        ("first", None),
        ("again", None),
        ("after", None),
    ]


async def test_take_resume_data_before_the_wait_returns() -> None:
    """A step can take the resume payload without calling wait_for_event again."""
    flow = stemd.Flow("resume2.flow")

    @flow.step("review")
    async def review(ctx: stemd.FlowContext) -> Any:
        data = ctx.take_resume_data()
        if data is None:
            await ctx.wait_for_event("resume2.review")
        return {"data": data, "again": ctx.take_resume_data()}

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        await app.emit("resume2.review", [1, 2])
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == {"data": [1, 2], "again": None}


async def test_idempotency_key_is_stable_across_reruns() -> None:
    """idempotency_key is stable across entries of a step; distinct per step, suffix, run."""
    keys: list[tuple[str, str, str]] = []
    flow = stemd.Flow("idem.flow")

    @flow.step("charge")
    async def charge(ctx: stemd.FlowContext) -> None:
        keys.append((ctx.run_id, "charge", ctx.idempotency_key()))
        keys.append((ctx.run_id, "charge:x", ctx.idempotency_key("x")))
        await ctx.sleep(1)

    @flow.step("ship")
    async def ship(ctx: stemd.FlowContext) -> None:
        keys.append((ctx.run_id, "ship", ctx.idempotency_key()))

    async with open_app(flow, clock=(clock := ManualClock())) as app:
        runs = [await app.start_workflow(flow, run_id=f"idem-{i}") for i in range(2)]
        for run_id in runs:
            await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(1)
        for run_id in runs:
            assert (await app.wait_for_completion(run_id, timeout=5)).is_completed
    by_slot: dict[tuple[str, str], set[str]] = {}
    for run_id, slot, key in keys:
        by_slot.setdefault((run_id, slot), set()).add(key)
    assert len(keys) == 10  # charge entered twice per run, ship once
    assert all(len(v) == 1 for v in by_slot.values())
    distinct = {next(iter(v)) for v in by_slot.values()}
    assert len(distinct) == len(by_slot) == 6


async def test_step_error_without_retry_fails_the_run() -> None:
    """By default a step that raises fails the run at once, recording type, message, step."""
    calls = Counter[str]()
    flow = stemd.Flow("boom.flow")

    @flow.step("ok")
    async def ok(ctx: stemd.FlowContext) -> int:
        return 1

    @flow.step("bad")
    async def bad(ctx: stemd.FlowContext) -> int:
        calls["bad"] += 1
        raise ValueError("no good")

    @flow.step("never")
    async def never(ctx: stemd.FlowContext) -> int:
        calls["never"] += 1
        return 3

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.is_failed
    assert result.value is None
    assert result.error is not None
    assert (result.error.type, result.error.message, result.error.step) == (
        "ValueError",
        "no good",
        "bad",
    )
    assert calls == {"bad": 1}
    assert result.state is not None
    assert result.state.checkpoints == {"ok": 1}


async def test_flow_declaration_rejects_bad_steps() -> None:
    """A flow refuses duplicate step names, reserved characters and plain functions."""
    flow = stemd.Flow("decl.flow")

    @flow.step("a")
    async def a(ctx: stemd.FlowContext) -> None:
        return None

    with pytest.raises(ValueError, match="already has"):
        flow.step("a")(a)
    # An empty name falls back to the function's name, here a duplicate.
    for bad, wording in (
        ("x#1", "must not contain '@' or '#'"),
        ("x@y", "must not contain '@' or '#'"),
        ("", "already has a step 'a'"),
    ):
        with pytest.raises(ValueError, match=wording):
            flow.step(bad)(a)

    def sync(ctx: stemd.FlowContext) -> None:
        return None

    with pytest.raises(TypeError):
        flow.step("sync")(sync)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workflow name 'bad#name' must not contain"):
        stemd.Flow("bad#name")


async def test_take_resume_data_after_a_timeout_is_none() -> None:
    """A wait that timed out carries no resume payload."""
    taken: list[Any] = []
    flow = stemd.Flow("resume-timeout.flow")

    @flow.step("review")
    async def review(ctx: stemd.FlowContext) -> str:
        try:
            await ctx.wait_for_event("resume-timeout.review", timeout=10)
        except stemd.EventTimeout:
            taken.append(ctx.take_resume_data())
            return "timed out"
        return "answered"

    async with open_app(flow, clock=(clock := ManualClock())) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(10)
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "timed out"
    assert taken == [None]
