"""Failures a workflow handles (issue 13): StepFailed in a script's body, recorded so a
replay raises it again; step timeouts; a flow's compensations."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import anyio
import pytest

import stemd
from tests.helpers import open_app, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
FAST = stemd.Retry(max_attempts=2, backoff=0.01, jitter=False)


async def _waiting(app: stemd.App, run_id: str) -> bool:
    state = await app.get_run(run_id)
    return state is not None and state.wait_topic is not None


async def test_step_failed_is_raised_in_the_body_and_replayed_without_rerunning() -> None:
    """A step whose retries are exhausted raises StepFailed at its call; the body's except
    runs a compensating step; a replay raises it again without running the step."""
    calls = Counter[str]()
    caught: list[tuple[str, str, int | None]] = []

    async def charge(amount: int) -> None:
        calls["charge"] += 1
        raise ValueError("card declined")

    async def refund(amount: int) -> str:
        calls["refund"] += 1
        return f"refunded {amount}"

    @stemd.script("fail.saga")
    async def saga(ctx: stemd.ScriptContext) -> str:
        try:
            await ctx.step("charge", charge, 5, retry=FAST)
            outcome = "charged"
        except stemd.StepFailed as failed:
            caught.append((failed.step, failed.error.type, failed.error.attempts))
            outcome = await ctx.step("refund", refund, 5)
        await ctx.wait_for_event("fail.saga.go")
        return outcome

    async with open_app(saga) as app:
        run_id = await app.start_workflow(saga)
        await wait_until(_waiting, app, run_id, what="the wait after the compensation")
        assert await app.emit("fail.saga.go", None) == 1
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "refunded 5"
    assert calls == Counter(charge=2, refund=1)  # the replay ran neither again
    assert caught == [("charge", "ValueError", 2)] * 2
    assert [e.kind for e in result.state.timeline][:2] == ["failed", "step"]


async def test_an_uncaught_step_failure_fails_the_run_with_the_steps_error() -> None:
    """StepFailed that the body does not catch fails the run with the step's own error."""

    @stemd.step(retry=FAST)
    async def explode() -> None:
        raise KeyError("gone")

    @stemd.script("fail.uncaught")
    async def body(ctx: stemd.ScriptContext) -> None:
        await explode()

    async with open_app(body) as app:
        result = await app.wait_for_completion(await app.start_workflow(body), timeout=5)
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert (result.error.type, result.error.step, result.error.attempts) == (
        "KeyError",
        "explode",
        2,
    )


async def test_an_attempt_past_its_timeout_is_cancelled_and_retried() -> None:
    """A step attempt longer than its timeout is cancelled and counts as a failed attempt,
    retried as its Retry says; on ctx.step, @stemd.step and @flow.step alike."""
    calls = Counter[str]()

    async def slow(label: str) -> str:
        calls[label] += 1
        if calls[label] == 1:
            await anyio.sleep(30)
        return label

    @stemd.step(timeout=0.05, retry=FAST)
    async def decorated() -> str:
        return await slow("decorated")

    @stemd.script("fail.timeouts")
    async def body(ctx: stemd.ScriptContext) -> list[str]:
        first = await ctx.step(
            "inline", slow, "inline", timeout=timedelta(seconds=0.05), retry=FAST
        )
        return [first, await decorated()]

    flow = stemd.Flow("fail.timeouts.flow")

    @flow.step("only", timeout=0.05, retry=FAST)
    async def only(ctx: stemd.FlowContext) -> str:
        return await slow("flow")

    @stemd.script("fail.timeouts.never")
    async def never(ctx: stemd.ScriptContext) -> None:
        await ctx.step("hang", anyio.sleep, 30, timeout=0.05)

    async with open_app(body, flow, never) as app:
        with anyio.fail_after(10):
            result = await app.wait_for_completion(await app.start_workflow(body), timeout=5)
            flowed = await app.wait_for_completion(await app.start_workflow(flow), timeout=5)
            hung = await app.wait_for_completion(await app.start_workflow(never), timeout=5)
    assert result.value == ["inline", "decorated"]
    assert flowed.value == "flow"
    assert calls == Counter(inline=2, decorated=2, flow=2)
    assert hung.status is RunStatus.FAILED
    assert hung.error is not None
    assert (hung.error.type, hung.error.step) == ("TimeoutError", "hang")


def test_a_bad_timeout_is_refused() -> None:
    """A step timeout that is not a positive duration is refused when declared."""
    flow = stemd.Flow("fail.bad")
    with pytest.raises(ValueError, match="timeout"):
        flow.step("x", timeout=0)
    with pytest.raises(TypeError):
        stemd.step(timeout="soon")  # type: ignore[call-overload]


async def test_a_flow_compensates_completed_steps_in_reverse_order() -> None:
    """When a flow step fails for good, the completed steps' compensations run once each,
    in reverse order, then the run fails with the step's error."""
    done: list[str] = []
    flow = stemd.Flow("fail.trip")

    async def undo(ctx: stemd.FlowContext) -> None:
        done.append(f"undo {ctx.step_name} {ctx.previous_result}")

    @flow.step("hotel", compensate=undo)
    async def hotel(ctx: stemd.FlowContext) -> str:
        done.append("hotel")
        return "H1"

    @flow.step("note")  # nothing to undo
    async def note(ctx: stemd.FlowContext) -> None:
        done.append("note")

    @flow.step("flight", compensate=undo)
    async def flight(ctx: stemd.FlowContext) -> str:
        done.append("flight")
        return "F1"

    @flow.step("pay", retry=FAST)
    async def pay(ctx: stemd.FlowContext) -> None:
        done.append("pay")
        raise RuntimeError("insufficient funds")

    async with open_app(flow) as app:
        result = await app.wait_for_completion(await app.start_workflow(flow), timeout=5)
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert (result.error.type, result.error.step) == ("RuntimeError", "pay")
    assert done == ["hotel", "note", "flight", "pay", "pay", "undo flight F1", "undo hotel H1"]
    kinds = [(e.name, e.kind) for e in result.state.timeline]
    assert kinds[-3:] == [
        ("pay@failed#0", "failed"),
        ("flight@undo#0", "undo"),
        ("hotel@undo#0", "undo"),
    ]


async def test_a_compensation_may_not_wait() -> None:
    """A compensation that sleeps or waits fails the run with a clear error."""
    flow = stemd.Flow("fail.waiting-undo")

    async def undo(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event("fail.never")

    @flow.step("a", compensate=undo)
    async def a(ctx: stemd.FlowContext) -> int:
        return 1

    @flow.step("b")
    async def b(ctx: stemd.FlowContext) -> None:
        raise RuntimeError("no")

    async with open_app(flow) as app:
        result = await app.wait_for_completion(await app.start_workflow(flow), timeout=5)
    assert result.status is RunStatus.FAILED
    assert result.error is not None
    assert "compensation cannot" in result.error.message


async def test_a_sleep_that_recorded_nothing_returns_at_once_on_replay() -> None:
    """A sleep whose wake time had passed when it was called records nothing; replayed
    after later calls were recorded, it returns at once instead of sleeping or stopping
    the run, however its wake time compares with the time of the replay."""
    pause = [0.0]  # the first pass sleeps 0 s (records nothing), the replay 60 s

    @stemd.script("fail.sleep-race")
    async def body(ctx: stemd.ScriptContext) -> list[Any]:
        first = await ctx.step("a", _echo, "a")
        await ctx.sleep(pause[0])
        second = await ctx.step("b", _echo, "b")
        return [first, second, await ctx.wait_for_event("fail.sleep-race.go")]

    async with open_app(body) as app:
        run_id = await app.start_workflow(body)
        await wait_until(_waiting, app, run_id, what="the wait")
        pause[0] = 60.0
        assert await app.emit("fail.sleep-race.go", "go") == 1
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == ["a", "b", "go"]


async def _echo(value: str) -> str:
    return value
