"""RunState.timeline: every checkpoint of a run with its time, the time it took to get
there, and its waits labelled; retries in RunState.retried_step / step_failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

import stemd
from stemd._codec import codec_for
from stemd._engine.timeline import build_timeline
from stemd._store.base import Checkpoint
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
T0 = datetime(2030, 1, 1, tzinfo=UTC)
CODEC = codec_for("json")


def at(secs: float) -> datetime:
    """The instant ``secs`` seconds after T0."""
    return T0 + timedelta(seconds=secs)


child = stemd.Flow("timeline.child")


@child.step("work")
async def work(ctx: stemd.FlowContext) -> str:
    """Returns ``"built"``."""
    return "built"


def _flow(fails: list[int]) -> stemd.Flow:
    flow = stemd.Flow("timeline.flow")

    @flow.step("prepare")
    async def prepare(ctx: stemd.FlowContext) -> str:
        return "ready"

    @flow.step("nap")
    async def nap(ctx: stemd.FlowContext) -> str:
        await ctx.sleep(10)
        return "rested"

    @flow.step("approve")
    async def approve(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event("timeline.approve")

    @flow.step("charge", retry=stemd.Retry(max_attempts=3, backoff=1, jitter=False))
    async def charge(ctx: stemd.FlowContext) -> str:
        if ctx.attempt <= len(fails):
            raise RuntimeError(f"card declined #{ctx.attempt}")
        return "charged"

    @flow.step("build")
    async def build(ctx: stemd.FlowContext) -> str:
        kid = await ctx.start_child(child, None, run_id="kid-1")
        return await ctx.wait_child(kid, type=str)

    return flow


async def test_the_timeline_lists_steps_and_waits_with_times_and_durations() -> None:
    """Steps and waits show in order, each with its time, duration and a word on waits."""
    flow = _flow(fails=[1])
    clock = ManualClock(T0)
    async with open_app(flow, child, clock=clock) as app:
        run_id = await app.start_workflow(flow, run_id="t1")
        await wait_status(app, run_id, RunStatus.SUSPENDED)  # the sleep
        clock.advance(10)

        async def waiting() -> bool:
            return [r.run_id for r in await app.runs_waiting_on("timeline.approve")] == ["t1"]

        await wait_until(waiting, what="the event wait")
        clock.advance(5)
        assert await app.emit("timeline.approve", {"by": "ana"}) == 1

        async def retrying() -> bool:
            state = await app.get_run(run_id)
            return state is not None and state.retried_step == "charge"

        await wait_until(retrying, what="the retry of charge")
        state = await app.get_run(run_id)
        assert state is not None
        assert state.step_failures == 1
        assert state.error is not None
        assert state.error.message == "card declined #1"
        clock.advance(1)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.is_completed
    state = result.state
    assert state is not None
    rows = [(e.name, e.kind, e.step, e.at, e.duration, e.detail) for e in state.timeline]
    assert rows == [
        ("prepare", "step", "prepare", at(0), 0.0, None),
        ("nap@sleep#0", "sleep", "nap", at(0), 0.0, "until 2030-01-01T00:00:10Z"),
        ("nap", "step", "nap", at(10), 10.0, None),
        ("approve@event#0", "event", "approve", at(15), 5.0, "received on timeline.approve"),
        ("approve", "step", "approve", at(15), 0.0, None),
        ("charge", "step", "charge", at(16), 1.0, None),
        ("build@child#0", "child_start", "build", at(16), 0.0, "kid-1"),
        ("build@join#0", "child_join", "build", at(16), 0.0, "completed"),
        ("build", "step", "build", at(16), 0.0, None),
    ]
    assert state.retried_step == "charge"
    assert state.step_failures == 1
    assert state.error is None
    assert list(state.checkpoints) == ["prepare", "nap", "approve", "charge", "build"]


async def test_the_timeline_survives_json_as_the_wire_sends_it() -> None:
    """The timeline encodes to JSON with RFC 3339 times and decodes back to the same."""
    flow = _flow(fails=[])
    clock = ManualClock(T0)
    async with open_app(flow, child, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        state = await app.get_run(run_id)
    assert state is not None
    data = msgspec.json.encode(state)
    plain = msgspec.json.decode(data)
    assert plain["timeline"][0] == {
        "name": "prepare",
        "kind": "step",
        "step": "prepare",
        "at": "2030-01-01T00:00:00Z",
        "duration": 0.0,
        "detail": None,
    }
    assert plain["retried_step"] is None
    assert plain["step_failures"] == 0
    assert msgspec.json.decode(data, type=stemd.RunState) == state


def test_waits_timeouts_and_failed_children_are_labelled() -> None:
    """A timed-out event wait, a script body's sleep and a failed child say so."""
    joined = {"s": "failed", "r": None, "m": "RuntimeError: broke"}
    cps = [
        Checkpoint("@sleep#0", CODEC.encode(at(60)), at(1)),
        Checkpoint("pay@event#0", CODEC.encode({"t": True}), at(31)),
        Checkpoint("@join#0", CODEC.encode(joined), at(32.5)),
    ]
    timeline = build_timeline(T0, cps, CODEC)
    assert [(e.kind, e.step, e.duration, e.detail) for e in timeline] == [
        ("sleep", "", 1.0, "until 2030-01-01T00:01:00Z"),
        ("event", "pay", 30.0, "timed out"),
        ("child_join", "", 1.5, "failed: RuntimeError: broke"),
    ]


def test_unknown_times_and_odd_values_give_no_duration_or_detail() -> None:
    """An unknown time gives no duration (to it or from it); an odd wait value no detail."""
    cps = [
        Checkpoint("a", CODEC.encode(1), None),
        Checkpoint("b", CODEC.encode(2), at(5)),
        Checkpoint("b@event#0", CODEC.encode([1, 2]), at(6)),
        Checkpoint("b@sleep#0", b"not json", at(7)),
    ]
    timeline = build_timeline(T0, cps, CODEC)
    assert [(e.at, e.duration, e.detail) for e in timeline] == [
        (None, None, None),
        (at(5), None, None),
        (at(6), 1.0, None),
        (at(7), 1.0, None),
    ]
