"""The run log: one line per run started, completed, failed or cancelled, and per step
retry, each with its run, workflow and status (and duration, step, attempt)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest
import structlog
from structlog.testing import LogCapture

import stemd
from stemd._runlog import RunLog
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.anyio

flow = stemd.Flow("runlog.flow")


@flow.step("flaky", retry=stemd.Retry(max_attempts=3, backoff=0.0, jitter=False))
async def flaky(ctx: stemd.FlowContext) -> str:
    """Fails its first ``fail`` attempts; returns ``"ok"``."""
    if ctx.attempt <= int((ctx.params or {}).get("fail", 0)):
        raise RuntimeError(f"attempt {ctx.attempt} failed")
    return "ok"


@flow.step("wait")
async def wait(ctx: stemd.FlowContext) -> str:
    """Waits for the ``hold`` event if the params name one."""
    topic = (ctx.params or {}).get("hold")
    if topic:
        await ctx.wait_for_event(topic)
    return "done"


@pytest.fixture
def lines() -> Iterator[list[dict[str, Any]]]:
    """The log lines of the test, at info level, as dicts."""
    saved = structlog.get_config()
    capture = LogCapture()
    structlog.configure(
        processors=[capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )
    yield capture.entries
    structlog.configure(**saved)


def _of(lines: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("run_id") == run_id]


async def test_a_run_logs_its_start_and_its_end(lines: list[dict[str, Any]]) -> None:
    """A run that completes logs exactly 'run started' then 'run completed' with a duration."""
    async with open_app(flow, actors=[RunLog]) as app:
        await app.start_workflow("runlog.flow", {}, run_id="plain")
        await wait_status(app, "plain", stemd.RunStatus.COMPLETED)
    mine = _of(lines, "plain")
    assert [line["event"] for line in mine] == ["run started", "run completed"]
    assert mine[0]["workflow"] == "runlog.flow"
    assert mine[0]["status"] == "running"
    assert mine[1]["status"] == "completed"
    assert mine[1]["duration"] >= 0


async def test_a_retried_step_logs_one_line_per_retry(lines: list[dict[str, Any]]) -> None:
    """Each failed attempt that will be retried logs one warning with step and attempt."""
    async with open_app(flow, actors=[RunLog]) as app:
        await app.start_workflow("runlog.flow", {"fail": 2}, run_id="flaky")
        await wait_status(app, "flaky", stemd.RunStatus.COMPLETED)
    mine = _of(lines, "flaky")
    assert [line["event"] for line in mine] == [
        "run started",
        "step failed; retrying",
        "step failed; retrying",
        "run completed",
    ]
    retries = mine[1:3]
    assert [(r["step"], r["attempt"]) for r in retries] == [("flaky", 1), ("flaky", 2)]
    assert retries[0]["error"] == "RuntimeError: attempt 1 failed"
    assert retries[0]["log_level"] == "warning"


async def test_a_failed_run_logs_one_line(lines: list[dict[str, Any]]) -> None:
    """A run whose retries run out logs one 'run failed' with status, duration and step."""
    async with open_app(flow, actors=[RunLog]) as app:
        await app.start_workflow("runlog.flow", {"fail": 3}, run_id="doomed")
        await wait_status(app, "doomed", stemd.RunStatus.FAILED)
    mine = _of(lines, "doomed")
    assert [line["event"] for line in mine] == [
        "run started",
        "step failed; retrying",
        "step failed; retrying",
        "run failed",
    ]
    failed = mine[-1]
    assert (failed["status"], failed["step"]) == ("failed", "flaky")
    assert failed["duration"] >= 0


async def test_a_cancelled_run_logs_one_line_with_its_duration(
    lines: list[dict[str, Any]],
) -> None:
    """Cancelling a waiting run logs one 'run cancelled' with the reason and the time
    since the run was created."""
    clock = ManualClock()
    async with open_app(flow, clock=clock, actors=[RunLog]) as app:
        await app.start_workflow("runlog.flow", {"hold": "never"}, run_id="held")
        await wait_status(app, "held", stemd.RunStatus.SUSPENDED)
        clock.advance(7)
        assert await app.cancel_run("held", reason="no longer needed")

        async def logged() -> bool:
            return any(line["event"] == "run cancelled" for line in lines)

        await wait_until(logged, what="the cancellation's line")
    mine = _of(lines, "held")
    assert [line["event"] for line in mine] == ["run started", "run cancelled"]
    cancelled = mine[-1]
    assert cancelled["status"] == "cancelled"
    assert cancelled["reason"] == "no longer needed"
    assert cancelled["duration"] == 7.0


async def test_a_resumed_run_is_not_started_twice(lines: list[dict[str, Any]]) -> None:
    """A run that waits and resumes logs 'run started' once, for its first slice."""
    async with open_app(flow, actors=[RunLog]) as app:
        await app.start_workflow("runlog.flow", {"hold": "go"}, run_id="resumed")
        await wait_status(app, "resumed", stemd.RunStatus.SUSPENDED)
        await app.emit("go", None)
        await wait_status(app, "resumed", stemd.RunStatus.COMPLETED)
    events = [line["event"] for line in _of(lines, "resumed")]
    assert events == ["run started", "run completed"]


@pytest.fixture
def anyio_backend() -> str:
    """These tests run on asyncio only."""
    return "asyncio"
