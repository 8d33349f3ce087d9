"""A run given back by a process that lacks its workflow: recorded as an error with a code
(not as the retries of a pseudo-step), shown as before, and read the same when an earlier
build stored it as the pseudo-step "@workflow"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import stemd
from stemd._cli.output import run_detail, runs_table
from stemd._codec import codec_for
from stemd._engine.engine import Engine
from stemd._model import ErrorInfo, RunState
from stemd._store.base import RetryLater, Store
from stemd.testing import ManualClock

pytestmark = pytest.mark.anyio

START = datetime(2030, 1, 1, tzinfo=UTC)

added = stemd.Flow("given.back")


@added.step("only")
async def only(ctx: stemd.FlowContext) -> str:
    """Returns ``"ran"``."""
    return "ran"


def _engine(store: Store, clock: ManualClock, owner: str, *flows: stemd.Flow) -> Engine:
    return Engine(
        store=store,
        broker=None,
        codec=codec_for("json"),
        clock=clock,
        workflows={f.name: f for f in flows},
        owner=owner,
        accept_unknown=True,
    )


def _shows_given_back(state: RunState) -> None:
    """What `stemd workflow get` and `list` show of a run given back: as they always did."""
    detail = run_detail(state)
    assert "status      suspended (workflow not registered where taken; next try at " in detail
    assert "retries" not in detail
    assert state.error is not None
    assert f"last error  UnknownWorkflow: {state.error.message}\n" in detail
    assert "workflow not registered where taken" in runs_table([state])


async def test_a_give_back_is_an_error_with_a_code_not_a_step(store: Store) -> None:
    """The give-back is the run's error (code unknown_workflow, attempts = tries); no step
    is named for it, and `stemd workflow get` shows it as before."""
    clock = ManualClock(START)
    old = _engine(store, clock, "old-daemon")
    run_id, _ = await old.start_run("given.back", run_id="g1")
    for tries, delay in [(1, 1.0), (2, 2.0)]:
        rec = await old.advance(run_id)
        assert rec is not None
        assert rec.status is stemd.RunStatus.SUSPENDED
        assert (rec.attempt_step, rec.step_failures) == (None, 0)
        state = await old.state(run_id)
        assert state is not None
        assert state.error == ErrorInfo(
            type="UnknownWorkflow",
            message=f"workflow 'given.back' is not registered in the process that took the "
            f"run (old-daemon); tried {tries} time{'s' if tries != 1 else ''}, again until one "
            "that knows it takes it",
            attempts=tries,
            code="unknown_workflow",
        )
        assert (state.retried_step, state.step_failures) == (None, 0)
        assert state.resume_at == clock.now() + timedelta(seconds=delay)
        _shows_given_back(state)
        clock.advance(delay)
        assert await old.fire_timer(run_id) == "woken"


async def test_a_give_back_stored_by_an_earlier_build_reads_as_todays(store: Store) -> None:
    """A run an earlier build gave back three times (the pseudo-step "@workflow" with 3
    failures, as it committed it) reads with today's error code and no retried step, shows
    as before, is given back a fourth time 8 s later, and then runs where it is known."""
    clock = ManualClock(START)
    old = _engine(store, clock, "old-daemon")
    run_id, _ = await old.start_run("given.back", run_id="legacy-1")
    claim = await store.claim(run_id, "earlier-build", clock.now(), 30.0)
    assert claim is not None
    error = ErrorInfo(
        type="UnknownWorkflow",
        message="workflow 'given.back' is not registered in the process that took the run "
        "(earlier-build); tried 3 times, again until one that knows it takes it",
    )
    earlier = RetryLater(
        step="@workflow", failures=3, resume_at=clock.now() + timedelta(seconds=4), error=error
    )
    await store.commit(run_id, claim.token, earlier, clock.now())

    state = await old.state(run_id)
    assert state is not None
    assert state.error == ErrorInfo(
        type="UnknownWorkflow", message=error.message, attempts=3, code="unknown_workflow"
    )
    assert (state.retried_step, state.step_failures) == (None, 0)
    _shows_given_back(state)

    clock.advance(4)
    assert await old.fire_timer(run_id) == "woken"
    rec = await old.advance(run_id)
    assert rec is not None
    assert rec.error is not None
    assert (rec.error.code, rec.error.attempts) == ("unknown_workflow", 4)
    assert (rec.attempt_step, rec.step_failures) == (None, 0)
    assert rec.resume_at == clock.now() + timedelta(seconds=8)

    clock.advance(8)
    assert await old.fire_timer(run_id) == "woken"
    new = _engine(store, clock, "new-daemon", added)
    done = await new.advance(run_id)
    assert done is not None
    assert done.status is stemd.RunStatus.COMPLETED
    assert done.error is None
