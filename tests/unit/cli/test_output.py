"""How `stemd workflow get` shows a run: its fields, then its timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from stemd._cli.output import duration, run_detail, runs_table
from stemd._model import CheckpointInfo, ErrorInfo, RunState, RunStatus

T0 = datetime(2030, 1, 1, 9, 0, tzinfo=UTC)


def at(secs: float) -> datetime:
    """The instant ``secs`` seconds after T0."""
    return T0 + timedelta(seconds=secs)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.0, "0.000s"),
        (0.1044, "0.104s"),
        (59.9994, "59.999s"),
        (65, "1m05s"),
        (3600 + 125, "1h02m"),
        (2 * 86400 + 4 * 3600 + 59, "2d04h"),
        (-0.25, "-0.250s"),
    ],
)
def test_durations_are_short(seconds: float | None, text: str) -> None:
    """Durations read as seconds to the millisecond, then minutes, hours, days."""
    assert duration(seconds) == text


def test_a_completed_run_shows_every_checkpoint_wait_and_retry() -> None:
    """Steps with values, waits in words, the retried step marked, and how the run ended."""
    timeline = [
        CheckpointInfo(name="draft", kind="step", step="draft", at=at(0.25), duration=0.25),
        CheckpointInfo(
            name="review@event#0",
            kind="event",
            step="review",
            at=at(3600 + 125.25),
            duration=3725.0,
            detail="received",
        ),
        CheckpointInfo(name="review", kind="step", step="review", at=at(3726), duration=0.75),
    ]
    run = RunState(
        run_id="doc-42",
        workflow="approvals.flow",
        status=RunStatus.COMPLETED,
        params={"doc": 42},
        result="ok",
        checkpoints={"draft": "doc-42", "review": "ana"},
        created_at=T0,
        updated_at=at(3727),
        finished_at=at(3727),
        attempts=4,
        timeline=timeline,
        retried_step="review",
        step_failures=2,
    )
    assert run_detail(run) == (
        "run       doc-42\n"
        "workflow  approvals.flow\n"
        'status    completed (result "ok")\n'
        "queue     workflow\n"
        "created   2030-01-01 09:00:00Z\n"
        "updated   2030-01-01 10:02:07Z\n"
        "finished  2030-01-01 10:02:07Z (after 1h02m)\n"
        "attempts  4\n"
        'params    {"doc":42}\n'
        'result    "ok"\n'
        "retries   review succeeded after 2 failed attempts\n"
        "\n"
        "timeline (3 checkpoints):\n"
        "    #  AT                          +TIME  CHECKPOINT      WHAT\n"
        '    1  2030-01-01 09:00:00.250Z  +0.250s  draft           "doc-42"\n'
        "    2  2030-01-01 10:02:05.250Z   +1h02m  review@event#0  event received\n"
        '    3  2030-01-01 10:02:06.000Z  +0.750s  review          "ana"'
        "  (after 2 failed attempts)\n"
        '  end  2030-01-01 10:02:07.000Z  +1.000s                  completed: "ok"\n'
    )


def test_a_failing_run_shows_its_error_and_a_waiting_run_what_it_waits_for() -> None:
    """A run waiting to retry shows its last error and next attempt; a failed one its error."""
    error = ErrorInfo(type="ConnectionError", message="down", step="fetch", attempts=2)
    retrying = RunState(
        run_id="r1",
        workflow="w",
        status=RunStatus.SUSPENDED,
        error=error,
        resume_at=at(60),
        suspended_at=at(30),
        created_at=T0,
        updated_at=at(30),
        retried_step="fetch",
        step_failures=2,
    )
    out = run_detail(retrying)
    assert "status      suspended (retrying fetch at 2030-01-01 09:01:00Z)\n" in out
    assert "retries     fetch: 2 failed attempts; next attempt at 2030-01-01 09:01:00Z\n" in out
    assert "last error  ConnectionError: down (attempt 2)\n" in out
    assert out.endswith(
        "timeline (0 checkpoints):\n"
        "    #  AT                        +TIME  CHECKPOINT  WHAT\n"
        "  ...  2030-01-01 09:00:30.000Z                     "
        "retrying fetch at 2030-01-01 09:01:00Z\n"
    )
    failed = RunState(
        run_id="r1",
        workflow="w",
        status=RunStatus.FAILED,
        error=ErrorInfo(type="ConnectionError", message="down", step="fetch", attempts=3),
        created_at=T0,
        updated_at=at(90),
        finished_at=at(90),
        retried_step="fetch",
        step_failures=2,
    )
    out = run_detail(failed)
    assert "retries   fetch: all 3 attempts failed\n" in out
    assert "error     ConnectionError: down after 3 attempts\n" in out
    assert out.endswith(
        "  end  2030-01-01 09:01:30.000Z  +1m30s              "
        "failed: ConnectionError in fetch: down\n"
    )


def test_a_run_given_back_shows_so_until_it_has_run() -> None:
    """A run given back by processes that lack its workflow says so; once a process that
    knows it has run it (here: to a sleep), it shows what it does now."""
    unknown = ErrorInfo(type="UnknownWorkflow", message="workflow 'w' is not registered")
    given_back = RunState(
        run_id="r1",
        workflow="w",
        status=RunStatus.SUSPENDED,
        error=unknown,
        resume_at=at(4),
        suspended_at=at(3),
        created_at=T0,
        updated_at=at(3),
        retried_step="@workflow",
        step_failures=3,
    )
    out = run_detail(given_back)
    assert (
        "status      suspended (workflow not registered where taken; "
        "next try at 2030-01-01 09:00:04Z)\n"
    ) in out
    assert "retries" not in out
    asleep = msgspec.structs.replace(
        given_back,
        resume_at=at(3600),
        suspended_at=at(5),
        updated_at=at(5),
        timeline=[
            CheckpointInfo(name="nap@sleep#0", kind="sleep", step="nap", at=at(5), duration=5.0)
        ],
    )
    out = run_detail(asleep)
    assert "status      suspended (resumes at 2030-01-01 10:00:00Z)\n" in out
    assert "not registered where taken" not in out


def test_a_run_waiting_on_several_topics_shows_them_and_its_wait_data() -> None:
    """A wait on several topics names them all; the wait's data is shown with the status
    and on its own line."""
    run = RunState(
        run_id="doc-7",
        workflow="review.flow",
        status=RunStatus.SUSPENDED,
        created_at=T0,
        updated_at=at(1),
        suspended_at=at(1),
        wait_topic="review.approved",
        wait_topics=["review.approved", "review.rejected"],
        wait_data={"document": "doc-7"},
        resume_at=at(3600),
    )
    text = run_detail(run)
    status = (
        "status     suspended (waiting for event review.approved or review.rejected "
        '(until 2030-01-01 10:00:00Z) {"document":"doc-7"})\n'
    )
    assert status in text
    assert 'wait data  {"document":"doc-7"}\n' in text


def test_a_held_back_or_paused_run_shows_so() -> None:
    """A run held back by a concurrency limit shows the limit and its next try; a paused
    run shows that it is paused, in the table and in its detail."""
    at = datetime(2030, 1, 1, tzinfo=UTC)
    error = ErrorInfo(
        type="WaitingForSlot",
        message="waiting for a slot: 3 run(s) of w execute at once",
        code="waiting_for_slot",
        attempts=2,
    )
    held = RunState(
        run_id="r1", workflow="w", status=RunStatus.SUSPENDED, error=error, resume_at=at
    )
    assert "waiting for a slot: 3 run(s) of w execute at once; next try at" in runs_table([held])
    paused = RunState(run_id="r2", workflow="w", status=RunStatus.SUSPENDED, paused=True)
    assert "suspended paused" in runs_table([paused])
    assert "paused    yes: resume it to go on" in run_detail(paused)


def test_a_rate_limited_run_shows_its_rate_and_next_try() -> None:
    """A run held back by a rate limit shows the rate and its next try in the table."""
    at = datetime(2030, 1, 1, tzinfo=UTC)
    error = ErrorInfo(
        type="RateLimited",
        message="rate limited: 10 run(s) of w start per 1 s",
        code="rate_limited",
        attempts=1,
    )
    held = RunState(
        run_id="r1", workflow="w", status=RunStatus.SUSPENDED, error=error, resume_at=at
    )
    assert "rate limited: 10 run(s) of w start per 1 s; next try at" in runs_table([held])
