"""The App's API: starting, inspecting, emitting, cancelling, waiting (contract §2)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import msgspec
import pytest

import stemd
from stemd._store.memory import MemoryStore
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    label: str
    size: float


def _waiting_flow(name: str, calls: Counter[str] | None = None) -> stemd.Flow:
    flow = stemd.Flow(name)

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> Any:
        if calls is not None:
            calls[ctx.run_id] += 1
        return await ctx.wait_for_event(f"{name}.go")

    return flow


async def test_get_run_of_an_unknown_id_is_none() -> None:
    """get_run returns None for a run id nobody created."""
    async with open_app() as app:
        assert await app.get_run("no-such-run") is None


async def test_run_state_describes_the_run() -> None:
    """RunState carries the run's identity, status, params, times, policy and attempts."""
    flow = _waiting_flow("state.flow")
    clock = ManualClock()
    policy = stemd.CancellationPolicy(max_run_duration=600)
    async with open_app(flow, clock=clock) as app:
        run_id = await app.start_workflow(
            "state.flow", params={"a": 1}, run_id="state-1", policy=policy
        )
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
    assert isinstance(state, stemd.RunState)
    assert state.run_id == "state-1"
    assert state.workflow == "state.flow"
    assert state.params == {"a": 1}
    assert state.result is None
    assert state.error is None
    assert state.wait_topic == "state.flow.go"
    assert state.parent_run_id is None
    assert state.policy == policy
    assert state.created_at == clock.now()
    assert state.updated_at is not None
    assert state.cancel_reason is None
    assert state.lease_owner is None
    assert state.attempts == 1
    assert state.checkpoints == {}


async def test_wait_for_completion_times_out() -> None:
    """wait_for_completion returns timed_out=True with the current status after timeout."""
    flow = _waiting_flow("slow.flow")
    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        with anyio.fail_after(5):
            result = await app.wait_for_completion(run_id, timeout=0.1)
        assert result.timed_out
        assert result.status is RunStatus.SUSPENDED
        assert result.value is None
        assert not (result.is_completed)
        assert not (result.is_failed)
        assert not (result.is_cancelled)
        await app.emit("slow.flow.go", "now")
        done = await app.wait_for_completion(run_id, timeout=timedelta(seconds=5))
    assert not done.timed_out
    assert done.is_completed
    assert done.value == "now"
    assert done.run_id == run_id


async def test_a_timed_out_wait_keeps_nothing_for_the_run() -> None:
    """A wait_for_completion that times out leaves no waiter behind for its run: waits on
    runs that never end in this process cost nothing once they return."""
    flow = _waiting_flow("idle.flow")
    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        for _ in range(3):
            assert (await app.wait_for_completion(run_id, timeout=0.05)).timed_out
        assert app.engine.events._ended == {}


async def test_a_wait_sees_the_end_of_a_run_another_process_finished(tmp_path: Any) -> None:
    """A run that ended in another App on the same SQLite file (its end never published
    here) is seen by wait_for_completion's reads."""
    flow = _waiting_flow("elsewhere.flow")
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    async with open_app(flow, store=url) as here, open_app(flow, store=url) as there:
        run_id = await here.start_workflow(flow)
        await wait_status(here, run_id, RunStatus.SUSPENDED)
        async with anyio.create_task_group() as tg:

            async def emit_there() -> None:
                await anyio.sleep(0.05)
                assert await there.emit("elsewhere.flow.go", "there") == 1

            tg.start_soon(emit_there)
            with anyio.fail_after(10):
                done = await here.wait_for_completion(run_id, timeout=10)
    assert done.is_completed
    assert done.value == "there"


async def test_wait_for_completion_of_an_unknown_run_raises() -> None:
    """Waiting on a run that does not exist raises RunNotFound."""
    async with open_app() as app:
        with pytest.raises(stemd.RunNotFound):
            await app.wait_for_completion("no-such-run", timeout=1)


async def test_wait_for_completion_decodes_the_value() -> None:
    """wait_for_completion(type=...) decodes the result into that type."""

    @stemd.script("point.script")
    async def point(ctx: stemd.ScriptContext) -> dict[str, int]:
        return {"x": 1, "y": 2}

    async with open_app(point) as app:
        run_id = await app.start_workflow(point)
        typed = await app.wait_for_completion(run_id, timeout=5, type=Point)
        plain = await app.wait_for_completion(run_id, timeout=5)
    assert typed.value == Point(1, 2)
    assert plain.value == {"x": 1, "y": 2}


async def test_start_with_an_existing_run_id_starts_nothing() -> None:
    """start_workflow with an existing run_id returns it and starts no second run."""
    calls = Counter[str]()
    flow = _waiting_flow("idem-start.flow", calls)
    async with open_app(flow) as app:
        first = await app.start_workflow(flow, params={"n": 1}, run_id="order-1")
        await wait_status(app, first, RunStatus.SUSPENDED)
        again = await app.start_workflow(flow, params={"n": 2}, run_id="order-1")
        assert first == again == "order-1"
        assert await app.emit("idem-start.flow.go", "x") == 1
        result = await app.wait_for_completion(first, timeout=5)
        assert await app.start_workflow(flow, params={"n": 3}, run_id="order-1") == "order-1"
        runs = await app.list_runs()
    assert [r.run_id for r in runs] == ["order-1"]
    assert runs[0].params == {"n": 1}
    assert runs[0].status is RunStatus.COMPLETED
    assert result.value == "x"
    assert calls == {"order-1": 2}


async def test_generated_run_ids_are_valid_and_distinct() -> None:
    """Run ids stemd generates follow the run id rules and do not repeat."""
    flow = _waiting_flow("gen.flow")
    async with open_app(flow, workers=False) as app:
        ids = [await app.start_workflow(flow) for _ in range(50)]
    assert len(set(ids)) == 50
    for run_id in ids:
        assert 1 <= len(run_id) <= 128
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in run_id)


async def test_unknown_workflow_is_rejected_and_nothing_written() -> None:
    """An unknown workflow name, or a definition the app does not know, is UnknownWorkflow."""
    known = _waiting_flow("known.flow")
    stranger = _waiting_flow("stranger.flow")
    async with open_app(known) as app:
        with pytest.raises(stemd.UnknownWorkflow):
            await app.start_workflow("nope.flow")
        with pytest.raises(stemd.UnknownWorkflow):
            await app.start_workflow(stranger)
        with pytest.raises(stemd.UnknownWorkflow):
            await app.start_workflow(42)
        assert isinstance(stemd.UnknownWorkflow("x"), stemd.StemError)
        assert await app.list_runs() == []


async def test_params_that_do_not_encode_are_rejected_and_nothing_written() -> None:
    """Params msgspec cannot encode raise PayloadError before anything is written."""
    flow = _waiting_flow("payload.flow")
    async with open_app(flow) as app:
        for bad in (object(), {"k": complex(1, 2)}, [1, lambda: 0]):
            with pytest.raises(stemd.PayloadError):
                await app.start_workflow(flow, params=bad, run_id="payload-1")
        assert await app.list_runs() == []
        assert await app.get_run("payload-1") is None


@pytest.mark.parametrize(
    "run_id", ["", "a b", "a.b", "a/b", "run*", "ü", "x" * 129, "line\n", None, 7]
)
async def test_invalid_run_id_is_rejected_and_nothing_written(run_id: Any) -> None:
    """A run id outside 1-128 ASCII letters, digits, '-' and '_' is refused up front."""
    flow = _waiting_flow("badid.flow")
    async with open_app(flow) as app:
        if run_id is None:
            return  # None means "generate one": covered elsewhere
        with pytest.raises(stemd.StemError):
            await app.start_workflow(flow, run_id=run_id)
        assert await app.list_runs() == []


@pytest.mark.parametrize("run_id", ["a", "A-z_09", "x" * 128, "-_-"])
async def test_valid_run_ids_are_accepted(run_id: str) -> None:
    """Every id made of 1-128 ASCII letters, digits, '-' and '_' is accepted."""
    flow = _waiting_flow("goodid.flow")
    async with open_app(flow, workers=False) as app:
        assert await app.start_workflow(flow, run_id=run_id) == run_id
        state = await app.get_run(run_id)
    assert state is not None
    assert state.status is RunStatus.PENDING


async def test_emit_with_no_waiter_returns_zero() -> None:
    """An emit that finds no run waiting on the topic returns 0 and changes nothing."""
    flow = _waiting_flow("nowaiter.flow")
    async with open_app(flow) as app:
        assert await app.emit("nobody.listens", {"x": 1}) == 0
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.emit("nowaiter.flow.other", 1) == 0
        state = await app.get_run(run_id)
    assert state is not None
    assert state.status is RunStatus.SUSPENDED


async def test_list_runs_filters_newest_first() -> None:
    """list_runs filters by workflow and status (enum or string), newest first, limited."""
    a = _waiting_flow("list-a.flow")
    b = stemd.Flow("list-b.flow")

    @b.step("only")
    async def only(ctx: stemd.FlowContext) -> int:
        return 1

    clock = ManualClock()
    async with open_app(a, b, clock=clock) as app:
        ids = []
        for flow in (a, b, a, b):
            ids.append(await app.start_workflow(flow))
            clock.advance(1)
        for run_id in ids:
            await wait_status(app, run_id, RunStatus.SUSPENDED, RunStatus.COMPLETED)

        def run_ids(states: list[stemd.RunState]) -> list[str]:
            return [s.run_id for s in states]

        assert run_ids(await app.list_runs()) == ids[::-1]
        assert run_ids(await app.list_runs(workflow="list-a.flow")) == [ids[2], ids[0]]
        assert run_ids(await app.list_runs(status=RunStatus.COMPLETED)) == [ids[3], ids[1]]
        assert run_ids(await app.list_runs(status="suspended")) == [ids[2], ids[0]]
        assert run_ids(await app.list_runs(status="SUSPENDED", limit=1)) == [ids[2]]
        assert await app.list_runs(workflow="list-a.flow", status=RunStatus.COMPLETED) == []
        assert run_ids(await app.list_runs(limit=3)) == ids[:0:-1]
        with pytest.raises(stemd.StemError):
            await app.list_runs(status="sleeping")
        with pytest.raises(stemd.StemError):
            await app.list_runs(limit=0)


async def test_runs_waiting_on_lists_the_waiters_of_a_topic() -> None:
    """runs_waiting_on returns the runs suspended on that topic, and only them."""
    a = _waiting_flow("wa.flow")
    b = _waiting_flow("wb.flow")
    async with open_app(a, b) as app:
        ones = [await app.start_workflow(a) for _ in range(2)]
        other = await app.start_workflow(b)
        for run_id in [*ones, other]:
            await wait_status(app, run_id, RunStatus.SUSPENDED)
        waiting = await app.runs_waiting_on("wa.flow.go")
        assert sorted(s.run_id for s in waiting) == sorted(ones)
        assert all(s.wait_topic == "wa.flow.go" for s in waiting)
        assert await app.runs_waiting_on("nobody") == []
        await app.emit("wa.flow.go", 1)
        assert await app.runs_waiting_on("wa.flow.go") == []
        assert [s.run_id for s in await app.runs_waiting_on("wb.flow.go")] == [other]


async def test_cancel_run_ends_a_waiting_run() -> None:
    """cancel_run cancels a live run with its reason; a second cancel returns False."""
    flow = _waiting_flow("cancel.flow")
    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.cancel_run(run_id, reason="operator") is True
        result = await app.wait_for_completion(run_id, timeout=5)
        assert await app.cancel_run(run_id, reason="again") is False
        assert await app.cancel_run("no-such-run") is False
        assert await app.emit("cancel.flow.go", 1) == 0
    assert result.is_cancelled
    assert result.state is not None
    assert result.state.cancel_reason == "operator"
    assert result.state.finished_at is not None


async def test_cancel_run_discards_a_running_step_s_result() -> None:
    """A run cancelled mid-step stays CANCELLED: the step's late result is refused."""
    entered = anyio.Event()
    release = anyio.Event()
    after = Counter[str]()
    flow = stemd.Flow("cancel-running.flow")

    @flow.step("busy")
    async def busy(ctx: stemd.FlowContext) -> str:
        entered.set()
        await release.wait()
        return "late"

    @flow.step("next")
    async def next_step(ctx: stemd.FlowContext) -> str:
        after["next"] += 1
        return "never"

    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await entered.wait()
        assert await app.cancel_run(run_id)
        release.set()
        assert app.pool is not None
        await wait_until(_idle, app, what="the worker to finish its slice")
        state = await app.get_run(run_id)
    assert state is not None
    assert state.status is RunStatus.CANCELLED
    assert state.checkpoints == {}
    assert after["next"] == 0


async def _idle(app: stemd.App) -> bool:
    assert app.pool is not None
    return app.pool.statistics().busy == 0


async def test_client_app_executes_nothing_and_a_worker_app_picks_runs_up() -> None:
    """workers=False starts runs but executes none; an app with workers executes them."""
    calls = Counter[str]()
    flow = _waiting_flow("client.flow", calls)
    store = MemoryStore()
    async with open_app(flow, store=store, workers=False) as client:
        run_id = await client.start_workflow(flow)
        result = await client.wait_for_completion(run_id, timeout=0.05)
        assert result.timed_out
        assert result.status is RunStatus.PENDING
        assert calls[run_id] == 0
        assert client.pool is None
    async with open_app(flow, store=store) as worker:
        await wait_status(worker, run_id, RunStatus.SUSPENDED)
        assert await worker.emit("client.flow.go", "hi") == 1
        assert (await worker.wait_for_completion(run_id, timeout=5)).value == "hi"


async def test_app_must_be_open() -> None:
    """Using an App outside `async with` is a StemError."""
    app = stemd.App(store="memory://")
    with pytest.raises(stemd.StemError):
        await app.start_workflow("x")


def test_app_refuses_two_workflows_of_one_name() -> None:
    """Registering two different workflows under one name is an error."""
    with pytest.raises(ValueError, match=r"two workflows are named 'dup\.flow'"):
        stemd.App(workflows=[_waiting_flow("dup.flow"), _waiting_flow("dup.flow")])
    with pytest.raises(TypeError):
        stemd.App(workflows=[object()])  # type: ignore[list-item]


# -- values (§1.4) ------------------------------------------------------------------------

MOMENT = datetime(2031, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
VALUES: list[tuple[str, Any, Any]] = [
    ("none", None, type(None)),
    ("bool", True, bool),
    ("int", -(2**40), int),
    ("float", 2.5, float),
    ("str", "héllo ✓", str),
    ("bytes", b"\x00\xffbin", bytes),
    ("list", [1, "two", None, [3.5]], list[Any]),
    ("dict", {"k": {"nested": [1, 2]}, "e": {}}, dict[str, Any]),
    ("datetime", MOMENT, datetime),
    ("struct", Point(3, -4), Point),
    ("dataclass", Box("crate", 1.25), Box),
]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize(("kind", "value", "typ"), VALUES, ids=[v[0] for v in VALUES])
async def test_values_round_trip(kind: str, value: Any, typ: Any, codec: str) -> None:
    """Every §1.4 value kind round-trips as params, step result, payload and final result."""
    seen: dict[str, Any] = {}

    async def echo(v: Any) -> Any:
        return v

    echo.__annotations__ = {"v": typ, "return": typ}
    echo_step = stemd.step(name="echo")(echo)

    async def body(ctx: stemd.ScriptContext, params: Any) -> Any:
        stored = await echo_step(params)
        payload = await ctx.wait_for_event(f"values.{kind}", type=typ)
        seen.update(params=params, step=stored, payload=payload)
        return payload

    body.__annotations__ = {"ctx": stemd.ScriptContext, "params": typ, "return": typ}
    script = stemd.script(f"values-{kind}.script")(body)
    async with open_app(script, codec=codec) as app:
        run_id = await app.start_workflow(script, params=value)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await app.emit(f"values.{kind}", value) == 1
        result = await app.wait_for_completion(run_id, timeout=5, type=typ)
    assert result.is_completed, result.error
    for where in ("params", "step", "payload"):
        assert seen[where] == value, where
        assert type(seen[where]) is type(value), where
    assert result.value == value
    assert type(result.value) is type(value)


async def test_emit_of_a_payload_that_does_not_encode_resumes_nothing() -> None:
    """Emit of an unencodable payload raises PayloadError and the waiters keep waiting."""
    flow = _waiting_flow("bad-emit.flow")
    async with open_app(flow) as app:
        run_id = await app.start_workflow(flow)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        with pytest.raises(stemd.PayloadError):
            await app.emit("bad-emit.flow.go", object())
        assert [s.run_id for s in await app.runs_waiting_on("bad-emit.flow.go")] == [run_id]


async def test_app_executes_the_runs_of_its_queue_only() -> None:
    """An app's workers take runs of its own queue; runs sent to another queue wait."""
    calls = Counter[str]()
    flow = stemd.Flow("queued.flow")

    @flow.step("only")
    async def only(ctx: stemd.FlowContext) -> str:
        calls[ctx.run_id] += 1
        return "done"

    async with open_app(flow, queue="billing") as app:
        mine = await app.start_workflow(flow)
        other = await app.start_workflow(flow, queue="shipping")
        assert (await app.wait_for_completion(mine, timeout=5)).is_completed
        pending = await app.wait_for_completion(other, timeout=0.05)
        mine_state = await app.get_run(mine)
    assert mine_state is not None
    assert mine_state.queue == "billing"
    assert pending.timed_out
    assert pending.status is RunStatus.PENDING
    assert calls == {mine: 1}


async def test_an_app_with_workers_records_its_workflows_and_a_client_does_not(
    tmp_path: Any,
) -> None:
    """An App with workers records the workflows it serves in the store at start (name,
    kind, a flow's steps in order, version, when); a client App records nothing, and
    reads what the daemons recorded."""
    flow = _waiting_flow("registered.flow")

    @stemd.script("registered.script")
    async def script(ctx: stemd.ScriptContext) -> None:
        return None

    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    clock = ManualClock(datetime(2031, 5, 1, tzinfo=UTC))
    async with stemd.App(store=store, workflows=[flow], workers=False) as client:
        assert await client.registered_workflows() == []
    async with stemd.App(store=store, workflows=[flow, script], clock=clock):
        pass
    async with stemd.App(store=store, workers=False) as client:
        found = await client.registered_workflows()
    assert [(w.name, w.kind, w.steps, w.version) for w in found] == [
        ("registered.flow", "flow", ("wait",), None),
        ("registered.script", "script", None, None),
    ]
    assert {w.registered_at for w in found} == {datetime(2031, 5, 1, tzinfo=UTC)}
