"""Replay checks what it replays (issue 13): a checkpoint recorded by one call is never
returned to another after the workflow's code changed; the run stops with a visible,
recoverable WorkflowChanged error instead. Each case runs on every store: a run is
suspended under the old code, then resumed by an App with the new code."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio

START = datetime(2030, 1, 1, tzinfo=UTC)
RunStatus = stemd.RunStatus


async def _changed(app: stemd.App, run_id: str) -> stemd.RunState:
    """Wait until the run stopped with a WorkflowChanged error; return its state."""
    state: stemd.RunState | None = None

    async def stopped() -> bool:
        nonlocal state
        state = await app.get_run(run_id)
        if state is None:
            return False
        return state.status.is_terminal or (
            state.error is not None and state.error.code is not None
        )

    await wait_until(stopped, what="the run to stop with WorkflowChanged")
    assert state is not None
    assert state.error is not None
    assert state.error.type == "WorkflowChanged"
    assert state.error.code == "workflow_changed"
    assert not state.status.is_terminal  # recoverable: tried again, rewound or cancelled
    return state


async def _waiting(app: stemd.App, topic: str, run_id: str) -> bool:
    state = await app.get_run(run_id)
    return state is not None and state.status is RunStatus.SUSPENDED and state.wait_topic == topic


def _payments(topic: str, seen: list[Any]) -> stemd.Script:
    @stemd.script("chg.payments")
    async def payments(ctx: stemd.ScriptContext) -> Any:
        first = await ctx.wait_for_event(topic)
        seen.append(first)
        await ctx.wait_for_event("chg.payments.done")
        return first

    return payments


async def test_a_wait_on_another_topic_never_gets_the_recorded_event(store: Store) -> None:
    """A wait whose topic changed stops the run with WorkflowChanged instead of returning the
    event recorded for the old topic; code that matches again completes the run."""
    clock = ManualClock(START)
    old_seen: list[Any] = []
    new_seen: list[Any] = []
    async with open_app(_payments("payments.refund", old_seen), store=store, clock=clock) as app:
        run_id = await app.start_workflow("chg.payments")
        await wait_until(_waiting, app, "payments.refund", run_id, what="the first wait")
        assert await app.emit("payments.refund", {"amount": 5}) == 1
        await wait_until(_waiting, app, "chg.payments.done", run_id, what="the second wait")
    async with open_app(
        _payments("payments.chargeback", new_seen), store=store, clock=clock
    ) as app:
        assert await app.emit("chg.payments.done", None) == 1
        state = await _changed(app, run_id)
        assert "payments.refund" in state.error.message  # type: ignore[union-attr]
        assert "payments.chargeback" in state.error.message  # type: ignore[union-attr]
        assert [s.run_id for s in await app.list_runs(workflow="chg.payments")] == [run_id]
    assert new_seen == []  # the recorded refund never reached the chargeback wait
    async with open_app(_payments("payments.refund", old_seen), store=store, clock=clock) as app:
        clock.advance(2)  # the stopped run is tried again: the matching code completes it
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == {"amount": 5}


def _reminder(topics: list[str]) -> stemd.Script:
    @stemd.script("chg.reminder")
    async def reminder(ctx: stemd.ScriptContext) -> Any:
        try:
            if len(topics) == 1:
                got = await ctx.wait_for_event(topics[0], timeout=5)
            else:
                got = list(await ctx.wait_for_any(topics, timeout=5))
        except stemd.EventTimeout:
            got = "timed out"
        await ctx.wait_for_event("chg.reminder.done")
        return got

    return reminder


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["reminder.sms"], ["reminder.mail"]),
        (["reminder.sms", "reminder.push"], ["reminder.sms", "reminder.mail"]),
    ],
    ids=["wait_for_event", "wait_for_any"],
)
async def test_a_wait_that_timed_out_on_other_topics_stops_the_run(
    store: Store, old: list[str], new: list[str]
) -> None:
    """A wait that timed out is replayed as a timeout only by a wait on the same topics: one
    whose topics changed stops the run with WorkflowChanged; the old code completes it."""
    clock = ManualClock(START)
    async with open_app(_reminder(old), store=store, clock=clock) as app:
        run_id = await app.start_workflow("chg.reminder")
        await wait_until(_waiting, app, old[0], run_id, what="the wait")
        clock.advance(6)
        await wait_until(_waiting, app, "chg.reminder.done", run_id, what="the second wait")
    async with open_app(_reminder(new), store=store, clock=clock) as app:
        assert await app.emit("chg.reminder.done", None) == 1
        state = await _changed(app, run_id)
        assert "reminder.sms" in state.error.message  # type: ignore[union-attr]
        assert "reminder.mail" in state.error.message  # type: ignore[union-attr]
    async with open_app(_reminder(list(reversed(old))), store=store, clock=clock) as app:
        clock.advance(2)  # the same topics (in any order): the timeout is replayed
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "timed out"


def _parent(child: str) -> stemd.Script:
    @stemd.script("chg.parent")
    async def parent(ctx: stemd.ScriptContext) -> Any:
        child_id = await ctx.start_child(child)
        await ctx.wait_for_event("chg.parent.go")
        return await ctx.wait_child(child_id)

    return parent


def _child(name: str) -> stemd.Script:
    @stemd.script(name)
    async def child(ctx: stemd.ScriptContext) -> str:
        return name

    return child


async def test_a_child_of_another_workflow_never_gets_the_recorded_child(store: Store) -> None:
    """start_child of another workflow than the recorded child stops the run with
    WorkflowChanged: neither the old child's id nor its result is returned."""
    clock = ManualClock(START)
    old, new = _child("up.child.old"), _child("up.child.new")
    async with open_app(_parent("up.child.old"), old, new, store=store, clock=clock) as app:
        run_id = await app.start_workflow("chg.parent")
        await wait_until(_waiting, app, "chg.parent.go", run_id, what="the parent's wait")
    async with open_app(_parent("up.child.new"), old, new, store=store, clock=clock) as app:
        assert await app.emit("chg.parent.go", None) == 1
        state = await _changed(app, run_id)
    assert "up.child.old" in state.error.message  # type: ignore[union-attr]
    assert "up.child.new" in state.error.message  # type: ignore[union-attr]
    assert state.result is None


async def _times10(i: int) -> int:
    return i * 10


def _loop(inserted: bool, pause: str) -> stemd.Script:
    @stemd.script("chg.loop")
    async def loop(ctx: stemd.ScriptContext) -> list[int]:
        if inserted:  # a checkpoint inserted before the loop, under the loop's step name
            await ctx.step("item", _times10, 0)
        out = []
        for i in range(1, 4):
            out.append(await ctx.step("item", _times10, i))
            if pause == "wait":
                await ctx.wait_for_event("chg.loop.tick")
            else:
                await ctx.sleep(10)
        return out

    return loop


@pytest.mark.parametrize("pause", ["wait", "sleep"])
async def test_a_checkpoint_inserted_before_a_loop_never_shifts_its_values(
    store: Store, pause: str
) -> None:
    """A step inserted before a loop of steps (each followed by a wait, or a sleep) stops
    the run with WorkflowChanged instead of handing each iteration the value recorded for
    the one before."""
    clock = ManualClock(START)

    async def resume(app: stemd.App) -> None:
        if pause == "wait":
            assert await app.emit("chg.loop.tick", None) == 1
        else:
            clock.advance(10)

    async with open_app(_loop(False, pause), store=store, clock=clock) as app:
        run_id = await app.start_workflow("chg.loop")
        first, second = (1, 3) if pause == "wait" else (2, 4)
        await wait_until(_entries, app, run_id, first, what="the first iteration's pause")
        await resume(app)
        await wait_until(_entries, app, run_id, second, what="the second iteration's pause")
    async with open_app(_loop(True, pause), store=store, clock=clock) as app:
        await resume(app)
        state = await _changed(app, run_id)
    assert state.result is None
    assert "'item#1'" in state.error.message  # type: ignore[union-attr]


async def _entries(app: stemd.App, run_id: str, n: int) -> bool:
    state = await app.get_run(run_id)
    return state is not None and state.status is RunStatus.SUSPENDED and len(state.timeline) >= n


def _review_flow(step: str) -> stemd.Flow:
    flow = stemd.Flow("chg.flow")

    @flow.step("draft")
    async def draft(ctx: stemd.FlowContext) -> str:
        return "draft"

    @flow.step(step)
    async def review(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event("chg.flow.review")

    return flow


async def test_a_flow_step_renamed_while_a_run_waits_in_it_stops_the_run(store: Store) -> None:
    """A flow run waiting in a step that no longer exists stops with WorkflowChanged once
    its event comes, instead of dropping the payload and waiting again."""
    clock = ManualClock(START)
    async with open_app(_review_flow("review"), store=store, clock=clock) as app:
        run_id = await app.start_workflow("chg.flow")
        await wait_until(_waiting, app, "chg.flow.review", run_id, what="the review wait")
    async with open_app(_review_flow("approve"), store=store, clock=clock) as app:
        assert await app.emit("chg.flow.review", "ok") == 1
        state = await _changed(app, run_id)
        assert state.wait_topic is None  # it does not wait again
        assert "'review'" in state.error.message  # type: ignore[union-attr]
        # Recoverable: a rewind to the renamed step's predecessor runs the new code.
        assert await app.rewind_run(run_id, "draft")
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        await wait_until(_waiting, app, "chg.flow.review", run_id, what="the new wait")
