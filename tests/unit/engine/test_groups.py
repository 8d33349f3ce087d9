"""Group operations of the App (pause_runs, resume_runs, cancel_runs): filters, counts,
dry runs, and what pausing does to runs that wait, sleep or run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
START = datetime(2030, 1, 1, tzinfo=UTC)
TAKEN: list[str] = []


@stemd.script("groups.waiter")
async def waiter(ctx: stemd.ScriptContext, params: Any) -> Any:
    """Waits for an event on groups.go, then records that it took it."""
    got = await ctx.wait_for_event("groups.go")
    TAKEN.append(ctx.run_id)
    return got


@stemd.script("groups.sleeper")
async def sleeper(ctx: stemd.ScriptContext, params: Any) -> str:
    """Sleeps a minute."""
    await ctx.sleep(60)
    return "woke"


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store the App uses."""
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/g.db"


async def test_paused_waiters_hold_an_event_and_take_it_once_resumed(store_url: str) -> None:
    """Runs paused while waiting on a topic stay suspended through an emit; resumed, each
    completes exactly once with the event's payload."""
    TAKEN.clear()
    async with open_app(waiter, store=store_url) as app:
        ids = [await app.start_workflow(waiter) for _ in range(20)]
        for run_id in ids:
            await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.pause_runs(topic="groups.go") == 20
        assert await app.emit("groups.go", {"v": 1}) == 0
        for run_id in ids:
            state = await app.get_run(run_id)
            assert state is not None
            assert state.status is RunStatus.SUSPENDED
            assert state.paused
        assert TAKEN == []
        assert await app.resume_runs(topic="groups.go") == 20
        for run_id in ids:
            assert (await app.wait_for_completion(run_id, timeout=10)).value == {"v": 1}
        assert sorted(TAKEN) == sorted(ids)


async def test_filters_select_the_group_and_dry_runs_change_nothing(store_url: str) -> None:
    """Every filter narrows the group; a dry run counts what would change and changes
    nothing; operating again changes nothing more."""
    clock = ManualClock(START)
    async with open_app(waiter, sleeper, store=store_url, clock=clock) as app:
        first = await app.start_workflow(waiter)
        clock.advance(10)
        second = await app.start_workflow(waiter)
        slept = await app.start_workflow(sleeper)
        for run_id in (first, second):
            await wait_status(app, run_id, RunStatus.SUSPENDED)
        await wait_status(app, slept, RunStatus.SUSPENDED)
        assert await app.pause_runs(workflow="groups.waiter", dry_run=True) == 2
        assert not (await app.get_run(first)).paused  # type: ignore[union-attr]
        assert await app.pause_runs(created_before=START + timedelta(seconds=5)) == 1
        assert await app.pause_runs(workflow="groups.sleeper", status="suspended") == 1
        assert await app.pause_runs(run_ids=[first, second]) == 1
        assert await app.pause_runs(workflow="groups.waiter") == 0
        assert await app.resume_runs(created_after=START.isoformat(), dry_run=True) == 2
        assert await app.resume_runs(status=RunStatus.SUSPENDED) == 3
        assert await app.resume_runs(status=RunStatus.SUSPENDED) == 0
        count, ids = await app.preview_runs("cancel", workflow="groups.waiter", limit=1)
        assert count == 2
        assert len(ids) == 1
        assert await app.cancel_runs(workflow="groups.waiter", reason="incident") == 2
        assert await app.cancel_runs(workflow="groups.waiter", reason="incident") == 0
        state = await app.get_run(first)
        assert state is not None
        assert state.cancel_reason == "incident"
        assert (await app.get_run(slept)).status is RunStatus.SUSPENDED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"run_ids": "not-a-list"},
        {"status": "sleeping"},
        {"topic": "bad topic"},
        {"created_after": datetime(2030, 1, 1)},
        {"created_before": "yesterday"},
        {"workflow": ""},
    ],
)
async def test_bad_filters_are_refused_and_change_nothing(filters: dict[str, Any]) -> None:
    """A missing or malformed filter is a StemError, and no run is changed."""
    async with open_app(waiter) as app:
        run_id = await app.start_workflow(waiter)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        with pytest.raises(stemd.StemError):
            await app.pause_runs(**filters)
        assert not (await app.get_run(run_id)).paused  # type: ignore[union-attr]


async def test_cancel_runs_needs_a_reason_that_is_text() -> None:
    """cancel_runs refuses an empty reason."""
    async with open_app(waiter) as app:
        with pytest.raises(stemd.StemError):
            await app.cancel_runs(workflow="groups.waiter", reason="")


async def test_a_paused_sleeper_wakes_only_after_it_is_resumed() -> None:
    """The timer of a paused run is held: its wake time passes and nothing happens; once
    resumed, the overdue wake fires."""
    clock = ManualClock(START)
    async with open_app(sleeper, clock=clock) as app:
        run_id = await app.start_workflow(sleeper)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.pause_runs(run_ids=[run_id]) == 1
        clock.advance(120)
        assert await app.engine.fire_timer(run_id) == "none"  # what the timer would do
        assert (await app.get_run(run_id)).status is RunStatus.SUSPENDED  # type: ignore[union-attr]
        assert await app.resume_runs(run_ids=[run_id]) == 1
        assert (await app.wait_for_completion(run_id, timeout=10)).value == "woke"


GATE: dict[str, anyio.Event] = {}
STEPS: list[str] = []


async def _one() -> int:
    STEPS.append("one")
    await GATE["one"].wait()
    return 1


async def _two() -> int:
    STEPS.append("two")
    return 2


@stemd.script("groups.stepper")
async def stepper(ctx: stemd.ScriptContext, params: Any) -> str:
    """Two steps; the first waits for the test's gate."""
    await ctx.step("one", _one)
    await ctx.step("two", _two)
    return "done"


async def test_a_running_run_pauses_at_its_next_checkpoint(store_url: str) -> None:
    """Paused mid-step, a run finishes that step, records it and stops there; resumed, it
    goes on with the next step and runs the first one only once."""
    STEPS.clear()
    GATE["one"] = anyio.Event()
    async with open_app(stepper, store=store_url) as app:
        run_id = await app.start_workflow(stepper)

        async def in_step_one() -> bool:
            return STEPS == ["one"]

        await wait_until(in_step_one)
        assert await app.pause_runs(run_ids=[run_id]) == 1
        GATE["one"].set()

        async def stopped() -> bool:
            state = await app.get_run(run_id)
            return (
                state is not None
                and state.status is RunStatus.PENDING
                and "one" in (state.checkpoints)
            )

        await wait_until(stopped)
        assert STEPS == ["one"]
        state = await app.get_run(run_id)
        assert state is not None
        assert state.paused
        assert await app.resume_runs(run_ids=[run_id]) == 1
        assert (await app.wait_for_completion(run_id, timeout=10)).value == "done"
        assert STEPS == ["one", "two"]


async def test_pausing_a_workflow_with_new_runs_pauses_its_future_runs(store_url: str) -> None:
    """pause_runs(workflow=..., new_runs=True) pauses the workflow's runs and those started
    afterwards; resume_runs(..., new_runs=True) resumes them all and new runs start again."""
    TAKEN.clear()
    async with open_app(waiter, sleeper, store=store_url) as app:
        before = await app.start_workflow(waiter)
        await wait_status(app, before, RunStatus.SUSPENDED)
        assert await app.pause_runs(workflow="groups.waiter", new_runs=True) == 1
        assert await app.paused_workflows() == ["groups.waiter"]
        during = await app.start_workflow(waiter)
        state = await app.get_run(during)
        assert state is not None
        assert state.paused
        assert state.status is RunStatus.PENDING
        other = await app.start_workflow(sleeper)
        await wait_status(app, other, RunStatus.SUSPENDED)
        assert await app.resume_runs(workflow="groups.waiter", new_runs=True) == 2
        assert await app.paused_workflows() == []
        await wait_status(app, during, RunStatus.SUSPENDED)
        after = await app.start_workflow(waiter)
        await wait_status(app, after, RunStatus.SUSPENDED)
        assert await app.emit("groups.go", 7) == 3
        for run_id in (before, during, after):
            assert (await app.wait_for_completion(run_id, timeout=10)).value == 7


async def test_new_runs_needs_a_workflow() -> None:
    """new_runs without a workflow filter is refused (dry run or not), and changes nothing."""
    async with open_app(waiter) as app:
        with pytest.raises(stemd.StemError):
            await app.pause_runs(topic="groups.go", new_runs=True)
        with pytest.raises(stemd.StemError):
            await app.resume_runs(status="pending", new_runs=True, dry_run=True)
        assert await app.paused_workflows() == []
