"""Durable suspensions: sleep, sleep_until and wait_for_event (contract §1.1, §1.4)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import msgspec
import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
START = datetime(2030, 1, 1, tzinfo=UTC)


class Approval(msgspec.Struct):
    approved_by: str
    level: int = 1


@dataclasses.dataclass
class Shipment:
    carrier: str
    parcels: int


async def _still_suspended(app: stemd.App, run_id: str) -> None:
    """The run has not moved on (checked after giving the workers a chance)."""
    result = await app.wait_for_completion(run_id, timeout=0.05)
    assert result.timed_out
    assert result.status is RunStatus.SUSPENDED


async def test_sleep_suspends_until_its_wake_time() -> None:
    """Sleep suspends the run until its wake time, then the step re-enters and sleep is None."""
    entries = Counter[str]()
    returned: list[Any] = []
    flow = stemd.Flow("sleep.flow")

    @flow.step("nap")
    async def nap(ctx: stemd.FlowContext) -> str:
        entries["nap"] += 1
        returned.append(await ctx.sleep(10))
        return "rested"

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.resume_at == START + timedelta(seconds=10)
        assert state.lease_owner is None
        assert state.checkpoints == {}
        clock.advance(9)
        await _still_suspended(app, run_id)
        clock.advance(1)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "rested"
    assert entries["nap"] == 2
    assert returned == [None]


async def test_sleep_accepts_a_timedelta() -> None:
    """Sleep takes a timedelta as well as seconds."""
    flow = stemd.Flow("sleep-td.flow")

    @flow.step("nap")
    async def nap(ctx: stemd.FlowContext) -> None:
        await ctx.sleep(timedelta(minutes=2))

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.resume_at == START + timedelta(minutes=2)
        clock.advance(timedelta(minutes=2))
        assert (await app.wait_for_completion(run_id, timeout=5)).is_completed


async def test_sleep_until_a_datetime() -> None:
    """sleep_until suspends until the given instant; one in the past returns at once."""
    entries = Counter[str]()
    flow = stemd.Flow("until.flow")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> None:
        entries["wait"] += 1
        await ctx.sleep_until(START - timedelta(days=1))  # already past: no suspension
        await ctx.sleep_until(START + timedelta(hours=1))

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.resume_at == START + timedelta(hours=1)
        clock.advance(3599)
        await _still_suspended(app, run_id)
        clock.advance(1)
        assert (await app.wait_for_completion(run_id, timeout=5)).is_completed
    assert entries["wait"] == 2


async def test_sleep_until_needs_an_aware_datetime() -> None:
    """sleep_until with a naive datetime fails the step instead of guessing a time zone."""
    flow = stemd.Flow("naive.flow")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> None:
        await ctx.sleep_until(datetime(2030, 1, 2))

    async with open_app(flow, clock=ManualClock(START)) as app:
        result = await app.wait_for_completion(await app.start_workflow(flow), timeout=5)
    assert result.is_failed


async def test_wake_time_is_kept_across_re_entries() -> None:
    """A sleep's wake time is fixed by its first call: an early re-entry sleeps until then."""
    entries = Counter[str]()
    flow = stemd.Flow("fixed.flow")

    @flow.step("first")
    async def first(ctx: stemd.FlowContext) -> None:
        entries["first"] += 1
        await ctx.sleep(100)

    @flow.step("second")
    async def second(ctx: stemd.FlowContext) -> None:
        return None

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(40)
        # Rewinding to a step not reached yet deletes nothing but resumes the run now.
        assert await app.rewind_run(run_id, "second")
        await wait_until(lambda: _entered(entries, 2), what="the early re-entry")
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.resume_at == START + timedelta(seconds=100)
        clock.advance(60)
        assert (await app.wait_for_completion(run_id, timeout=5)).is_completed
    assert entries["first"] == 3


async def _entered(entries: Counter[str], n: int) -> bool:
    return entries["first"] >= n


async def test_wait_for_event_returns_the_payload() -> None:
    """wait_for_event suspends on its topic; emit resumes it with the payload."""
    entries = Counter[str]()
    flow = stemd.Flow("event.flow")

    @flow.step("review")
    async def review(ctx: stemd.FlowContext) -> Any:
        entries["review"] += 1
        decision = await ctx.wait_for_event("approvals.manager")
        return decision["approvedBy"]

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.wait_topic == "approvals.manager"
        assert state.resume_at is None
        assert await app.emit("approvals.manager", {"approvedBy": "ana"}) == 1
        result = await app.wait_for_completion(run_id, timeout=5, type=str)
        assert await app.emit("approvals.manager", {"approvedBy": "bob"}) == 0
    assert result.value == "ana"
    assert entries["review"] == 2


async def test_each_wait_receives_one_payload() -> None:
    """Two waits on one topic need two emits: a payload is delivered to one wait only."""
    flow = stemd.Flow("twice.flow")

    @flow.step("collect")
    async def collect(ctx: stemd.FlowContext) -> list[Any]:
        first = await ctx.wait_for_event("twice.item")
        second = await ctx.wait_for_event("twice.item")
        return [first, second]

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.emit("twice.item", "one") == 1
        await wait_until(
            lambda: _waiting(app, "twice.item", run_id), what="the second wait to begin"
        )
        state = await app.get_run(run_id)
        assert state is not None
        assert state.status is RunStatus.SUSPENDED
        assert await app.emit("twice.item", "two") == 1
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == ["one", "two"]


async def _waiting(app: stemd.App, topic: str, run_id: str) -> bool:
    return run_id in {s.run_id for s in await app.runs_waiting_on(topic)}


async def test_emit_before_the_wait_is_not_buffered() -> None:
    """An emit that finds no waiter returns 0 and is not delivered to a later wait."""
    flow = stemd.Flow("early.flow")

    @flow.step("review")
    async def review(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event("early.topic")

    async with open_app(flow) as app:
        assert await app.emit("early.topic", "too early") == 0
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        await _still_suspended(app, run_id)
        assert await app.emit("early.topic", "on time") == 1
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "on time"


async def test_emit_resumes_every_waiter_of_the_topic() -> None:
    """One emit resumes every run waiting on the topic, and only those."""
    flow = stemd.Flow("fanout.flow")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event(ctx.params["topic"])

    async with open_app(flow) as app:
        runs = [await app.start_workflow(flow, params={"topic": "fan.a"}) for _ in range(3)]
        other = await app.start_workflow(flow, params={"topic": "fan.b"})
        for run_id in [*runs, other]:
            await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.emit("fan.a", 7) == 3
        for run_id in runs:
            assert (await app.wait_for_completion(run_id, timeout=5)).value == 7
        await _still_suspended(app, other)


@pytest.mark.parametrize("kind", [Approval, Shipment])
async def test_wait_for_event_decodes_into_type(kind: type) -> None:
    """wait_for_event(type=...) decodes the payload into a msgspec Struct or a dataclass."""
    payloads = {
        Approval: {"approved_by": "ana", "level": 2},
        Shipment: {"carrier": "ups", "parcels": 3},
    }
    got: list[Any] = []
    flow = stemd.Flow(f"typed-{kind.__name__}.flow")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> None:
        got.append(await ctx.wait_for_event("typed.event", type=kind))

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        await app.emit("typed.event", payloads[kind])
        assert (await app.wait_for_completion(run_id, timeout=5)).is_completed
    assert got == [kind(**payloads[kind])]
    assert type(got[0]) is kind


async def test_typed_event_accepts_an_emitted_struct() -> None:
    """A Struct emitted as payload arrives as that Struct when the wait names its type."""
    flow = stemd.Flow("struct-emit.flow")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> str:
        approval = await ctx.wait_for_event("struct.event", type=Approval)
        assert isinstance(approval, Approval)
        return f"{approval.approved_by}:{approval.level}"

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        await app.emit("struct.event", Approval(approved_by="eve", level=3))
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "eve:3"


async def test_event_timeout_is_raised_in_the_step_and_catchable() -> None:
    """A wait whose timeout passes first raises EventTimeout in the step on re-entry."""
    raised: list[BaseException] = []
    flow = stemd.Flow("timeout.flow")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> str:
        try:
            await ctx.wait_for_event("timeout.topic", timeout=30)
        except stemd.EventTimeout as exc:
            raised.append(exc)
            return "gave up"
        return "got it"

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.wait_topic == "timeout.topic"
        assert state.resume_at == START + timedelta(seconds=30)
        clock.advance(29)
        await _still_suspended(app, run_id)
        clock.advance(1)
        result = await app.wait_for_completion(run_id, timeout=5)
        assert await app.emit("timeout.topic", "late") == 0
    assert result.value == "gave up"
    assert len(raised) == 1
    assert isinstance(raised[0], stemd.StemError)
    assert raised[0].topic == "timeout.topic"  # type: ignore[attr-defined]


async def test_event_before_its_timeout_wins() -> None:
    """An event emitted before the timeout is returned; the timeout then does nothing."""
    flow = stemd.Flow("intime.flow")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event("intime.topic", timeout=timedelta(seconds=30))

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(10)
        assert await app.emit("intime.topic", "in time") == 1
        result = await app.wait_for_completion(run_id, timeout=5)
        clock.advance(100)
    assert result.value == "in time"


async def test_uncaught_event_timeout_fails_the_run() -> None:
    """An EventTimeout the step does not catch fails the run with that error."""
    flow = stemd.Flow("uncaught.flow")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event("uncaught.topic", timeout=5)

    clock = ManualClock(START)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(5)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "EventTimeout"
    assert "uncaught.topic" in result.error.message


async def test_suspension_escapes_a_broad_except() -> None:
    """A step's `except Exception` cannot swallow a suspension."""
    flow = stemd.Flow("broad.flow")
    swallowed: list[BaseException] = []

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> Any:
        try:
            return await ctx.wait_for_event("broad.topic")
        except Exception as exc:  # the anti-pattern the engine must survive
            swallowed.append(exc)
            return "swallowed"

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        await app.emit("broad.topic", "real")
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "real"
    assert swallowed == []


async def test_invalid_topic_is_rejected() -> None:
    """Emit and wait_for_event refuse topics that are not dot-separated tokens."""
    flow = stemd.Flow("badtopic.flow")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event("bad topic")

    async with open_app(flow) as app:
        for topic in ("", "a..b", "a b", "a.*", "a.>"):
            with pytest.raises(stemd.StemError):
                await app.emit(topic, 1)
        result = await app.wait_for_completion(await app.start_workflow(flow), timeout=5)
    assert result.is_failed


async def test_script_body_can_sleep_and_wait() -> None:
    """A script suspends from its body: sleep, then wait_for_event with a typed payload."""
    body_entries = Counter[str]()

    @stemd.script("sleepy.script")
    async def sleepy(ctx: stemd.ScriptContext) -> str:
        body_entries["body"] += 1
        await ctx.sleep(60)
        approval = await ctx.wait_for_event("sleepy.go", type=Approval)
        return approval.approved_by

    clock = ManualClock(START)
    async with open_app(sleepy, clock=clock) as app:
        run_id = await app.start_workflow(sleepy)
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.resume_at == START + timedelta(seconds=60)
        clock.advance(60)
        await wait_until(lambda: _waiting(app, "sleepy.go", run_id), what="the event wait")
        assert await app.emit("sleepy.go", {"approved_by": "zed"}) == 1
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "zed"
    assert body_entries["body"] == 3


async def test_suspension_inside_a_task_group_of_the_step() -> None:
    """A wait called from a task group inside a step or script suspends the run normally."""
    entries = Counter[str]()
    flow = stemd.Flow("taskgroup.flow")

    @flow.step("parallel")
    async def parallel(ctx: stemd.FlowContext) -> list[Any]:
        entries["parallel"] += 1
        got: list[Any] = []

        async def wait_for(topic: str) -> None:
            got.append(await ctx.wait_for_event(topic))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ctx.sleep, 5)
            tg.start_soon(wait_for, "taskgroup.go")
        return got

    @stemd.script("taskgroup.script")
    async def body(ctx: stemd.ScriptContext) -> str:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ctx.sleep, 5)
        return "slept"

    clock = ManualClock(START)
    async with open_app(flow, body, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        script_id = await app.start_workflow(body)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        await wait_status(app, script_id, RunStatus.SUSPENDED)
        clock.advance(5)
        assert (await app.wait_for_completion(script_id, timeout=5)).value == "slept"
        await wait_until(_waiting, app, "taskgroup.go", run_id, what="the event wait")
        assert await app.emit("taskgroup.go", "go") == 1
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == ["go"]
    assert entries["parallel"] >= 3


async def test_error_beside_a_suspension_in_a_task_group_fails_the_step() -> None:
    """An error beside a suspension in a step's task group fails the step; it is not lost."""
    flow = stemd.Flow("taskgroup-error.flow")

    @flow.step("parallel")
    async def parallel(ctx: stemd.FlowContext) -> None:
        async def boom() -> None:
            raise KeyError("lost")

        async with anyio.create_task_group() as tg:
            tg.start_soon(ctx.wait_for_event, "taskgroup-error.never")
            tg.start_soon(boom)

    async with open_app(flow) as app:
        result = await app.wait_for_completion(await app.start_workflow(flow), timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "ExceptionGroup"
    assert result.error.step == "parallel"
