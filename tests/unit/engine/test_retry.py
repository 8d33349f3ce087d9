"""Retry: a failing step is retried durably after a backoff, then the run fails (§1.1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
START = datetime(2030, 1, 1, tzinfo=UTC)


class Flaky(Exception):
    """The error the flaky steps raise."""


async def test_retry_waits_a_durable_backoff_between_attempts() -> None:
    """Each failure suspends the run for a doubling, capped backoff, then the step runs again."""
    attempts: list[int] = []
    flow = stemd.Flow("retry.flow")

    @flow.step("prepare")
    async def prepare(ctx: stemd.FlowContext) -> str:
        attempts.append(0)
        return "ready"

    @flow.step("call", retry=stemd.Retry(max_attempts=5, backoff=2, max_backoff=5, jitter=False))
    async def call(ctx: stemd.FlowContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 4:
            raise Flaky(f"attempt {ctx.attempt}")
        return f"{ctx.previous_result} after {ctx.attempt}"

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        for attempt, backoff in ((1, 2), (2, 4), (3, 5)):
            await wait_until(_tried, attempts, attempt, what=f"attempt {attempt}")
            state = await wait_status(app, run_id, RunStatus.SUSPENDED)
            assert state.resume_at == clock.now() + timedelta(seconds=backoff)
            assert state.error is not None
            assert (state.error.type, state.error.message) == ("Flaky", f"attempt {attempt}")
            clock.advance(backoff - 0.5)
            result = await app.wait_for_completion(run_id, timeout=0.05)
            assert result.status is RunStatus.SUSPENDED
            assert attempts[-1] == attempt
            clock.advance(0.5)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "ready after 4"
    assert attempts == [0, 1, 2, 3, 4]
    assert result.error is None


async def _tried(attempts: list[int], n: int) -> bool:
    return bool(attempts) and attempts[-1] >= n


async def test_run_fails_after_max_attempts() -> None:
    """After max_attempts failures the run is FAILED with the error's type and message."""
    attempts: list[int] = []
    flow = stemd.Flow("exhaust.flow")

    @flow.step("call", retry=stemd.Retry(max_attempts=3, backoff=1, jitter=False))
    async def call(ctx: stemd.FlowContext) -> None:
        attempts.append(ctx.attempt)
        raise Flaky("still broken")

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        for attempt, backoff in ((1, 1), (2, 2)):
            await wait_until(_tried, attempts, attempt, what=f"attempt {attempt}")
            await wait_status(app, run_id, RunStatus.SUSPENDED)
            clock.advance(backoff)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert attempts == [1, 2, 3]
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "Flaky"
    assert result.error.message == "still broken"
    assert result.error.step == "call"
    assert result.error.attempts == 3


async def test_non_retryable_error_fails_at_once() -> None:
    """An error marked non_retryable fails the run without using the retries."""
    attempts: list[int] = []

    class Fatal(Exception):
        non_retryable = True

    flow = stemd.Flow("fatal.flow")

    @flow.step("call", retry=stemd.Retry(max_attempts=5, backoff=1))
    async def call(ctx: stemd.FlowContext) -> None:
        attempts.append(ctx.attempt)
        raise Fatal("give up")

    async with open_app(flow, clock=ManualClock(START)) as app:
        result = await app.wait_for_completion(await app.start_workflow(flow), timeout=5)
    assert attempts == [1]
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "Fatal"


async def test_script_step_retry() -> None:
    """ctx.step(..., retry=) retries a script checkpoint after its backoff."""
    attempts: list[int] = []

    async def flaky(*, context: stemd.StepContext) -> str:
        attempts.append(context.attempt)
        if context.attempt == 1:
            raise Flaky("first")
        return "ok"

    @stemd.script("retry.script")
    async def body(ctx: stemd.ScriptContext) -> str:
        retry = stemd.Retry(max_attempts=2, backoff=10, jitter=False)
        return await ctx.step("flaky", flaky, retry=retry)

    clock = ManualClock(START)
    async with open_app(body, clock=clock) as app:
        run_id = await app.start_workflow(body)
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.resume_at == START + timedelta(seconds=10)
        clock.advance(10)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "ok"
    assert attempts == [1, 2]


async def test_decorated_step_retry() -> None:
    """@stemd.step(retry=...) retries the step wherever it is called in a script."""
    attempts: list[int] = []

    @stemd.step(name="fetch", retry=stemd.Retry(max_attempts=2, backoff=3, jitter=False))
    async def fetch(*, context: stemd.StepContext) -> int:
        attempts.append(context.attempt)
        if context.attempt == 1:
            raise Flaky("first")
        return 42

    @stemd.script("retry-deco.script")
    async def body(ctx: stemd.ScriptContext) -> int:
        return await fetch()

    clock = ManualClock(START)
    async with open_app(body, clock=clock) as app:
        run_id = await app.start_workflow(body)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(3)
        assert (await app.wait_for_completion(run_id, timeout=5)).value == 42
    assert attempts == [1, 2]


async def test_retry_backoff_with_jitter_stays_within_bounds() -> None:
    """With jitter a backoff is spread over half to all of its nominal value."""
    retry = stemd.Retry(max_attempts=10, backoff=4, max_backoff=10)
    for attempt, nominal in ((1, 4), (2, 8), (3, 10), (7, 10)):
        for _ in range(50):
            assert nominal / 2 <= retry.delay(attempt) <= nominal
    exact = stemd.Retry(backoff=4, max_backoff=10, jitter=False)
    assert [exact.delay(n) for n in (1, 2, 3)] == [4, 8, 10]


def test_retry_rejects_nonsense() -> None:
    """Retry refuses fewer than one attempt and negative backoffs."""
    with pytest.raises(ValueError, match="max_attempts must be at least 1"):
        stemd.Retry(max_attempts=0)
    with pytest.raises(ValueError, match="backoff must not be negative"):
        stemd.Retry(backoff=-1)
