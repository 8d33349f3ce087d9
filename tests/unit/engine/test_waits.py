"""Waits on events: an absolute ``deadline`` as well as a relative ``timeout``, ``data``
stored with the wait and shown while the run waits, and ``wait_for_any`` over several
topics (on flow and script contexts)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

import stemd
from stemd._codec import JsonCodec
from stemd._engine.interrupts import Interrupt
from stemd._engine.replay import Replay
from stemd._engine.waits import taken
from stemd._store.base import RunRecord
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
START = datetime(2030, 1, 1, tzinfo=UTC)


async def _waiting(app: stemd.App, topic: str, run_id: str) -> bool:
    return run_id in {s.run_id for s in await app.runs_waiting_on(topic)}


@stemd.script("waits.deadline")
async def until_deadline(ctx: stemd.ScriptContext, params: dict[str, Any]) -> str:
    """Waits for an event until the deadline in its params; returns the outcome."""
    deadline = datetime.fromisoformat(params["deadline"])
    try:
        got = await ctx.wait_for_event("waits.go", timeout=params.get("timeout"), deadline=deadline)
    except stemd.EventTimeout:
        return "timed out"
    return str(got)


async def test_a_deadline_times_the_wait_out_at_that_instant() -> None:
    """wait_for_event(deadline=...) times out at the deadline; with a timeout too, the
    earlier of the two applies."""
    clock = ManualClock(START)
    async with open_app(until_deadline, clock=clock) as app:
        late = START + timedelta(seconds=100)
        only = await app.start_workflow(until_deadline, {"deadline": late.isoformat()})
        both = await app.start_workflow(
            until_deadline, {"deadline": late.isoformat(), "timeout": 10}
        )
        assert (await wait_status(app, only, RunStatus.SUSPENDED)).resume_at == late
        assert (await wait_status(app, both, RunStatus.SUSPENDED)).resume_at == START + (
            timedelta(seconds=10)
        )
        clock.advance(10)
        assert (await app.wait_for_completion(both, timeout=5)).value == "timed out"
        assert (await app.get_run(only)).status is RunStatus.SUSPENDED  # type: ignore[union-attr]
        clock.advance(90)
        assert (await app.wait_for_completion(only, timeout=5)).value == "timed out"


async def test_an_event_before_the_deadline_wins() -> None:
    """An event that comes before the deadline is returned; the deadline then does nothing."""
    clock = ManualClock(START)
    async with open_app(until_deadline, clock=clock) as app:
        deadline = (START + timedelta(seconds=50)).isoformat()
        run_id = await app.start_workflow(until_deadline, {"deadline": deadline})
        await app.emit("waits.go", "in time")
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "in time"


async def test_a_deadline_that_is_no_aware_datetime_fails_the_step() -> None:
    """A naive deadline is refused in the step with a clear StemError."""
    flow = stemd.Flow("waits.naive")

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event("waits.go", deadline=datetime(2030, 1, 1))

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        done = await app.wait_for_completion(run_id, timeout=5)
        assert done.is_failed
        assert done.error is not None
        assert "deadline must be an aware datetime" in done.error.message


@stemd.script("waits.data")
async def with_data(ctx: stemd.ScriptContext, doc: str) -> str:
    """Waits for a review with data about the document; returns the decision."""
    decision = await ctx.wait_for_event("waits.review", data={"document": doc, "level": 2})
    return str(decision)


async def test_wait_data_is_shown_while_the_run_waits(store: Store) -> None:
    """data= is stored with the wait: runs_waiting_on and get_run show it (wait_data)
    while the run waits; it is gone once the wait is over."""
    async with stemd.App(store=store, workflows=[with_data]) as app:
        run_id = await app.start_workflow(with_data, "doc-7")
        await wait_until(_waiting, app, "waits.review", run_id, what="the wait")
        [waiting] = await app.runs_waiting_on("waits.review")
        assert waiting.wait_data == {"document": "doc-7", "level": 2}
        state = await app.get_run(run_id)
        assert state is not None
        assert state.wait_data == {"document": "doc-7", "level": 2}
        await app.send(run_id, "waits.review", "ok")
        done = await app.wait_for_completion(run_id, timeout=10)
        assert done.value == "ok"
        assert done.state is not None
        assert done.state.wait_data is None


@stemd.script("waits.any")
async def any_of(ctx: stemd.ScriptContext, topics: list[str]) -> list[Any]:
    """Waits on any of ``topics``; returns what it took."""
    first = await ctx.wait_for_any(topics)
    second = await ctx.wait_for_any(topics, timeout=60)
    return [list(first), list(second)]


async def test_wait_for_any_returns_the_first_and_keeps_the_rest(store: Store) -> None:
    """wait_for_any returns (topic, payload) of the first event there; what came on the
    other topic stays for the next wait."""
    async with stemd.App(store=store, workflows=[any_of]) as app:
        run_id = await app.start_workflow(any_of, ["waits.a", "waits.b"])
        await app.emit("waits.b", "b1")
        await app.emit("waits.a", "a1")
        done = await app.wait_for_completion(run_id, timeout=10)
        assert done.value == [["waits.b", "b1"], ["waits.a", "a1"]]


async def test_wait_for_any_is_listed_under_each_topic(store: Store) -> None:
    """A run in wait_for_any is listed by runs_waiting_on for each of its topics, with
    all of them in wait_topics; a message on one resumes it."""
    async with stemd.App(store=store, workflows=[any_of]) as app:
        run_id = await app.start_workflow(any_of, ["waits.x", "waits.y"])
        for topic in ("waits.x", "waits.y"):
            await wait_until(_waiting, app, topic, run_id, what="the wait")
        [state] = await app.runs_waiting_on("waits.y")
        assert (state.wait_topic, state.wait_topics) == ("waits.x", ["waits.x", "waits.y"])
        await app.send(run_id, "waits.y", 1)
        await app.send(run_id, "waits.x", 2)
        done = await app.wait_for_completion(run_id, timeout=10)
        assert done.value == [["waits.y", 1], ["waits.x", 2]]


async def test_wait_for_any_times_out_and_replays() -> None:
    """A flow step's wait_for_any times out with EventTimeout; on re-entry a recorded
    wait returns the same (topic, payload) again."""
    clock = ManualClock(START)
    flow = stemd.Flow("waits.anyflow")
    entries: list[Any] = []

    @flow.step("first")
    async def first(ctx: stemd.FlowContext) -> Any:
        got = await ctx.wait_for_any(["waits.p", "waits.q"])
        entries.append(got)
        try:
            await ctx.wait_for_any(["waits.p", "waits.q"], timeout=5)
        except stemd.EventTimeout as exc:
            return [list(got), str(exc)]
        return None

    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(flow)
        await app.emit("waits.q", "q!")
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        await wait_until(_waiting, app, "waits.p", run_id, what="the second wait")
        clock.advance(5)
        done = await app.wait_for_completion(run_id, timeout=5)
    assert done.value == [
        ["waits.q", "q!"],
        "no event on topic 'waits.p, waits.q' before the timeout",
    ]
    assert entries == [("waits.q", "q!"), ("waits.q", "q!")]


@stemd.script("waits.loose")
async def any_loose(ctx: stemd.ScriptContext, topics: Any) -> Any:
    """Waits on any of ``topics`` as given (possibly invalid)."""
    return await ctx.wait_for_any(topics)


@pytest.mark.parametrize("topics", [[], "waits.a", ["waits.a", "a..b"], [1]])
async def test_wait_for_any_refuses_bad_topics(topics: Any) -> None:
    """wait_for_any needs a non-empty list of valid topics: anything else fails the run
    with a clear StemError."""
    async with open_app(any_loose) as app:
        run_id = await app.start_workflow(any_loose, topics)
        done = await app.wait_for_completion(run_id, timeout=5)
        assert done.is_failed
        assert done.error is not None
        assert done.error.type == "StemError"


def test_a_timeout_recorded_without_its_topics_is_replayed_as_a_timeout() -> None:
    """A timeout recorded by an older stemd (no topics in it) replays as a timeout for any
    wait; one with its topics, for a wait on the same topics in any order."""
    codec = JsonCodec()
    replay = Replay(
        RunRecord(
            run_id="r",
            workflow="w",
            status=stemd.RunStatus.RUNNING,
            params=b"{}",
            created_at=START,
            updated_at=START,
        ),
        [],
        lambda: START,
    )
    for recorded in ({"t": True}, {"t": True, "w": ["t.b", "t.a"]}):
        with pytest.raises(stemd.EventTimeout):
            taken(codec, codec.encode(recorded), ("t.a", "t.b"), replay, "wait_for_any")
    with pytest.raises(Interrupt):
        taken(codec, codec.encode({"t": True, "w": ["t.b"]}), ("t.a",), replay, "wait_for_event")
