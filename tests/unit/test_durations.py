"""Durations (policies, retention, retry backoffs) are bounded: a deadline past the year
9999 cannot be computed, and a run carrying one failed at every commit and was retried
forever. Found by tests/fuzz/test_wire_fuzz.py (``"ttl": 1e308`` through stem.api.start)."""

from __future__ import annotations

import math

import pytest

import stemd
from stemd._model import MAX_DURATION, seconds
from tests.helpers import open_app

pytestmark = pytest.mark.anyio

flow = stemd.Flow("durations.flow")


@flow.step("only")
async def only(ctx: stemd.FlowContext) -> str:
    """Returns ``"ok"``."""
    return "ok"


@pytest.mark.parametrize("value", [1e308, math.inf, math.nan, MAX_DURATION * 2])
def test_durations_past_the_limit_are_refused(value: float) -> None:
    """seconds(), policies and retry backoffs refuse infinite, NaN and huge durations."""
    refused = r"must be (at most \d+ seconds \(100 years\)|a number of seconds, not NaN)"
    with pytest.raises(ValueError, match=f"^ttl {refused}"):
        seconds(value, "ttl")
    with pytest.raises(ValueError, match=f"^max_run_duration {refused}"):
        stemd.CancellationPolicy(max_run_duration=value)
    with pytest.raises(ValueError, match=f"^backoff {refused}"):
        stemd.Retry(max_attempts=3, backoff=value)


def test_retry_delays_stay_finite_after_many_attempts() -> None:
    """The backoff of attempt 5000 is max_backoff, not an overflow."""
    retry = stemd.Retry(max_attempts=10_000, backoff=1.0, max_backoff=30.0, jitter=False)
    assert retry.delay(5000) == 30.0


async def test_the_longest_durations_are_accepted_and_a_run_completes() -> None:
    """A run with the longest retention and policy completes; a longer ttl is refused."""
    policy = stemd.CancellationPolicy(
        max_run_duration=MAX_DURATION, max_suspend_duration=MAX_DURATION
    )
    async with open_app(flow) as app:
        run_id = await app.start_workflow("durations.flow", policy=policy, ttl=MAX_DURATION)
        result = await app.wait_for_completion(run_id, timeout=5)
        assert result.is_completed, result
        with pytest.raises(ValueError, match="ttl must be at most"):
            await app.start_workflow("durations.flow", ttl=1e308)
