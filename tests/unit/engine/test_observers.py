"""The engine's observers: given to it at construction, subscribed at any time, each hook
told with one frozen struct."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

import stemd
from stemd._codec import codec_for
from stemd._engine.engine import Engine
from stemd._engine.observer import (
    LostLease,
    Observer,
    Observers,
    RunChanged,
    RunStarted,
    SliceFinished,
    SliceStarted,
    StepFinished,
    StepStarted,
)
from stemd._store.memory import MemoryStore
from stemd.testing import ManualClock

pytestmark = pytest.mark.anyio

START = datetime(2030, 1, 1, tzinfo=UTC)
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

flow = stemd.Flow("observed.flow")


@flow.step("first")
async def first(ctx: stemd.FlowContext) -> int:
    """Returns 1."""
    return 1


@flow.step("second", retry=stemd.Retry(max_attempts=2, backoff=1.0, jitter=False))
async def second(ctx: stemd.FlowContext) -> int:
    """Fails its first attempt; returns 2."""
    if ctx.attempt == 1:
        raise RuntimeError("once")
    return 2


class Recorder(Observer):
    """Every hook, with what it was told."""

    def __init__(self, name: str = "", log: list[Any] | None = None) -> None:
        self.name = name
        self.seen: list[Any] = [] if log is None else log

    def run_started(self, event: RunStarted) -> None:
        self.seen.append(event)

    def run_changed(self, event: RunChanged) -> None:
        self.seen.append(event)

    def slice_started(self, event: SliceStarted) -> None:
        self.seen.append(event)

    def slice_finished(self, event: SliceFinished) -> None:
        self.seen.append((self.name, event) if self.name else event)

    def step_started(self, event: StepStarted) -> None:
        self.seen.append(event)

    def step_finished(self, event: StepFinished) -> None:
        self.seen.append((self.name, event) if self.name else event)

    def lease_lost(self, event: LostLease) -> None:
        self.seen.append(event)


def _engine(observers: Observers, clock: ManualClock) -> Engine:
    return Engine(
        store=MemoryStore(),
        broker=None,
        codec=codec_for("json"),
        clock=clock,
        workflows={flow.name: flow},
        owner="test",
        observers=observers,
    )


async def test_each_hook_is_told_with_one_frozen_struct_in_order() -> None:
    """A run's start, changes, slices and step attempts reach an observer subscribed to the
    engine's Observers, each hook with one frozen struct, in the order they happen."""
    recorder = Recorder()
    clock = ManualClock(START)
    engine = _engine(Observers(recorder), clock)
    created = clock.now()
    run_id, _ = await engine.start_run(flow, run_id="o1", trace=TRACE)
    await engine.advance(run_id)
    seen = recorder.seen
    assert [type(e).__name__ for e in seen] == [
        "RunStarted",
        "RunChanged",  # pending
        "RunChanged",  # running
        "SliceStarted",
        "StepStarted",
        "StepFinished",
        "StepStarted",
        "StepFinished",
        "RunChanged",  # suspended until the retry
        "SliceFinished",
    ]
    assert seen[0] == RunStarted(run_id="o1", workflow="observed.flow")
    assert seen[3] == SliceStarted(
        run_id="o1",
        workflow="observed.flow",
        attempt=1,
        queue="workflow",
        trace=TRACE,
        created_at=created,
    )
    assert seen[4] == StepStarted(run_id="o1", workflow="observed.flow", step="first", attempt=1)
    ok, failed = seen[5], seen[7]
    assert (ok.step, ok.attempt, ok.result, ok.error) == ("first", 1, "ok", None)
    assert (failed.step, failed.result, type(failed.error)) == ("second", "error", RuntimeError)
    suspended = seen[8]
    assert suspended.status is stemd.RunStatus.SUSPENDED
    assert suspended.timer_at == START.replace(second=1)
    assert (seen[9].outcome, seen[9].duration >= 0) == ("retry", True)
    for event in seen:
        with pytest.raises(AttributeError):
            event.run_id = "other"
        assert msgspec.structs.asdict(event)["run_id"] == "o1"


async def test_observers_subscribe_and_unsubscribe_at_any_time() -> None:
    """An observer subscribed after the engine was made is told from then on, and no more
    once unsubscribed; a hook no observer overrides is left empty (nothing to build)."""
    observers = Observers()
    clock = ManualClock(START)
    engine = _engine(observers, clock)
    assert not (observers.run_changed)
    assert not (observers.step_finished)
    assert not (observers.trace_contexts)

    class Steps(Observer):
        def __init__(self) -> None:
            self.steps: list[str] = []

        def step_finished(self, event: StepFinished) -> None:
            self.steps.append(f"{event.step}:{event.result}")

    steps = Steps()
    unsubscribe = observers.subscribe(steps)
    assert observers.step_finished
    assert not observers.step_started
    assert not observers.run_changed
    run_id, _ = await engine.start_run(flow)
    await engine.advance(run_id)
    assert steps.steps == ["first:ok", "second:error"]
    unsubscribe()
    assert not observers.step_finished
    clock.advance(1)
    assert await engine.fire_timer(run_id) == "woken"
    rec = await engine.advance(run_id)
    assert rec is not None
    assert rec.status is stemd.RunStatus.COMPLETED
    assert steps.steps == ["first:ok", "second:error"]


async def test_finishing_hooks_run_in_reverse_order_of_subscription() -> None:
    """step_finished and slice_finished reach later observers first: what they set up in
    the matching *_started hook is undone before what earlier ones set up."""
    log: list[Any] = []
    clock = ManualClock(START)
    engine = _engine(Observers(Recorder("a", log), Recorder("b", log)), clock)
    run_id, _ = await engine.start_run(flow)
    await engine.advance(run_id)
    finished = [entry[0] for entry in log if isinstance(entry, tuple)]
    assert finished == ["b", "a", "b", "a", "b", "a"]  # two steps, then the slice


async def test_a_run_started_without_a_trace_takes_the_observers_trace_context() -> None:
    """start_run records the trace context an observer provides (tracing: the caller's
    span) when none is given, the given one otherwise, and none when no observer has one."""

    class Tracing(Observer):
        def trace_context(self) -> str | None:
            return TRACE

    observers = Observers()
    clock = ManualClock(START)
    engine = _engine(observers, clock)
    await engine.start_run(flow, run_id="none")
    observers.subscribe(Tracing())
    await engine.start_run(flow, run_id="taken")
    given = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"
    await engine.start_run(flow, run_id="given", trace=given)
    records = [await engine.store.get_run(r) for r in ("none", "taken", "given")]
    assert [r.trace for r in records if r is not None] == [None, TRACE, given]
