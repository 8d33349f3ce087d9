"""Child workflows: start_child is checkpointed, wait_child suspends (contract §1.3)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

import stemd
from stemd._store.memory import MemoryStore
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

if TYPE_CHECKING:
    from stemd._store.base import RunRecord

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus


class Receipt(msgspec.Struct):
    order: str
    total: int


def _child_flow(name: str, calls: Counter[str]) -> stemd.Flow:
    """A child that waits for `<name>.go` and returns a receipt, or fails on demand."""
    child = stemd.Flow(name)

    @child.step("work")
    async def work(ctx: stemd.FlowContext) -> dict[str, Any]:
        calls["child"] += 1
        signal = await ctx.wait_for_event(f"{name}.go")
        if signal == "fail":
            raise RuntimeError("child broke")
        return {"order": ctx.params["order"], "total": 42}

    return child


async def _children(app: stemd.App, workflow: str) -> list[stemd.RunState]:
    return await app.list_runs(workflow=workflow)


async def _has_children(app: stemd.App, workflow: str, n: int) -> bool:
    return len(await _children(app, workflow)) >= n


async def _all_waiting(app: stemd.App, topic: str, n: int) -> bool:
    return len(await app.runs_waiting_on(topic)) >= n


async def test_wait_child_returns_the_child_result() -> None:
    """A parent starts a child, suspends on it, and gets its value when it completes."""
    calls = Counter[str]()
    child = _child_flow("child.flow", calls)
    parent = stemd.Flow("parent.flow")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> Any:
        child_id = await ctx.start_child(child, {"order": "o-1"})
        receipt = await ctx.wait_child(child_id, type=Receipt)
        assert isinstance(receipt, Receipt)
        return {"child": child_id, "total": receipt.total}

    async with open_app(parent, child) as app:
        parent_id = await app.start_workflow(parent)
        await wait_until(_all_waiting, app, "child.flow.go", 1, what="the child to wait")
        state = await wait_status(app, parent_id, RunStatus.SUSPENDED)
        (kid,) = await _children(app, "child.flow")
        assert kid.parent_run_id == parent_id
        assert kid.params == {"order": "o-1"}
        assert state.wait_child == kid.run_id
        assert await app.emit("child.flow.go", "ok") == 1
        result = await app.wait_for_completion(parent_id, timeout=5)
    assert result.value == {"child": kid.run_id, "total": 42}


async def test_re_entry_never_starts_a_second_child() -> None:
    """start_child is checkpointed: re-entering the step returns the same child id."""
    calls = Counter[str]()
    ids: list[str] = []
    child = _child_flow("once-child.flow", calls)
    parent = stemd.Flow("once-parent.flow")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> Any:
        child_id = await ctx.start_child("once-child.flow", {"order": "o-2"})
        ids.append(child_id)
        await ctx.sleep(5)  # a suspension before the join: the step is re-entered
        return await ctx.wait_child(child_id)

    clock = ManualClock()
    async with open_app(parent, child, clock=clock) as app:
        parent_id = await app.start_workflow(parent)
        await wait_status(app, parent_id, RunStatus.SUSPENDED)
        clock.advance(5)
        await wait_until(_entries, ids, 2, what="the parent to re-enter")
        await wait_status(app, parent_id, RunStatus.SUSPENDED)
        assert len(await _children(app, "once-child.flow")) == 1
        assert await app.emit("once-child.flow.go", "ok") == 1
        result = await app.wait_for_completion(parent_id, timeout=5)
    assert result.is_completed
    assert len(ids) == 3
    assert len(set(ids)) == 1
    assert calls["child"] == 2


async def _entries(ids: list[str], n: int) -> bool:
    return len(ids) >= n


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
async def test_wait_child_raises_child_failed(ending: str) -> None:
    """wait_child raises ChildFailed (catchable) when the child fails or is cancelled."""
    calls = Counter[str]()
    caught: list[stemd.ChildFailed] = []
    child = _child_flow(f"bad-child-{ending}.flow", calls)
    parent = stemd.Flow(f"bad-parent-{ending}.flow")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> str:
        child_id = await ctx.start_child(child, {"order": "o-3"})
        try:
            await ctx.wait_child(child_id)
        except stemd.ChildFailed as exc:
            caught.append(exc)
            return f"handled {exc.status}"
        return "unexpected"

    async with open_app(parent, child) as app:
        parent_id = await app.start_workflow(parent)
        topic = f"bad-child-{ending}.flow.go"
        await wait_until(_all_waiting, app, topic, 1, what="the child to wait")
        await wait_status(app, parent_id, RunStatus.SUSPENDED)
        (kid,) = await _children(app, child.name)
        if ending == "failed":
            await app.emit(topic, "fail")
        else:
            assert await app.cancel_run(kid.run_id, reason="operator")
        result = await app.wait_for_completion(parent_id, timeout=5)
    assert result.value == f"handled {ending}"
    assert len(caught) == 1
    assert caught[0].run_id == kid.run_id
    assert isinstance(caught[0], stemd.StemError)
    assert ("child broke" if ending == "failed" else "operator") in str(caught[0])


async def test_uncaught_child_failure_fails_the_parent() -> None:
    """A ChildFailed the parent does not catch fails the parent run."""
    calls = Counter[str]()
    child = _child_flow("lost-child.flow", calls)
    parent = stemd.Flow("lost-parent.flow")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_child(await ctx.start_child(child, {"order": "o"}))

    async with open_app(parent, child) as app:
        parent_id = await app.start_workflow(parent)
        await wait_until(_all_waiting, app, "lost-child.flow.go", 1, what="the child")
        await wait_status(app, parent_id, RunStatus.SUSPENDED)
        await app.emit("lost-child.flow.go", "fail")
        result = await app.wait_for_completion(parent_id, timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "ChildFailed"


async def test_wait_on_a_child_that_already_ended() -> None:
    """Waiting on a child that has already completed returns its value at once."""
    child = stemd.Flow("fast-child.flow")

    @child.step("only")
    async def only(ctx: stemd.FlowContext) -> int:
        return ctx.params * 2

    parent = stemd.Flow("slow-parent.flow")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> str:
        return await ctx.start_child(child, 21)

    @parent.step("pause")
    async def pause(ctx: stemd.FlowContext) -> str:
        await ctx.wait_for_event("slow-parent.go")
        return ctx.previous_result

    @parent.step("join")
    async def join(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_child(ctx.previous_result)

    async with open_app(parent, child) as app:
        parent_id = await app.start_workflow(parent)
        await wait_status(app, parent_id, RunStatus.SUSPENDED)
        (kid,) = await _children(app, "fast-child.flow")
        assert (await app.wait_for_completion(kid.run_id, timeout=5)).value == 42
        await app.emit("slow-parent.go", None)
        assert (await app.wait_for_completion(parent_id, timeout=5)).value == 42


async def test_script_children_with_explicit_run_ids() -> None:
    """A script body starts children (with given run ids) and joins them in turn."""

    @stemd.script("square.script")
    async def square(ctx: stemd.ScriptContext, n: int) -> int:
        return n * n

    @stemd.script("sum.script")
    async def total(ctx: stemd.ScriptContext, ns: list[int]) -> int:
        ids = [await ctx.start_child(square, n, run_id=f"sq-{n}") for n in ns]
        return sum([await ctx.wait_child(i, type=int) for i in ids])

    async with open_app(total, square) as app:
        run_id = await app.start_workflow(total, params=[1, 2, 3])
        result = await app.wait_for_completion(run_id, timeout=5)
        kids = await app.list_runs(workflow="square.script")
    assert result.value == 14
    assert sorted(k.run_id for k in kids) == ["sq-1", "sq-2", "sq-3"]
    assert {k.parent_run_id for k in kids} == {run_id}


async def test_start_child_of_an_unknown_workflow_fails_the_step() -> None:
    """Starting a child of an unregistered workflow fails the parent, starting nothing."""
    parent = stemd.Flow("orphan-parent.flow")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> str:
        return await ctx.start_child("no.such.workflow", {})

    async with open_app(parent) as app:
        result = await app.wait_for_completion(await app.start_workflow(parent), timeout=5)
        assert len(await app.list_runs()) == 1
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "UnknownWorkflow"


async def test_cancel_parent_cancels_unfinished_children() -> None:
    """Cancelling a parent cancels its children that have not ended."""
    calls = Counter[str]()
    child = _child_flow("cc-child.flow", calls)
    parent = stemd.Flow("cc-parent.flow")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_child(await ctx.start_child(child, {"order": "x"}))

    async with open_app(parent, child) as app:
        parent_id = await app.start_workflow(parent)
        await wait_until(_all_waiting, app, "cc-child.flow.go", 1, what="the child")
        await wait_status(app, parent_id, RunStatus.SUSPENDED)
        assert await app.cancel_run(parent_id, reason="operator")
        (kid,) = await _children(app, "cc-child.flow")
        parent_result = await app.wait_for_completion(parent_id, timeout=5)
        child_result = await app.wait_for_completion(kid.run_id, timeout=5)
        await anyio.lowlevel.checkpoint()
        assert await app.emit("cc-child.flow.go", "ok") == 0
    assert parent_result.is_cancelled
    assert parent_result.state is not None
    assert parent_result.state.cancel_reason == "operator"
    assert child_result.is_cancelled


async def test_parent_cancelled_by_its_policy_cancels_its_children() -> None:
    """A parent cancelled by its policy cancels its unfinished children, as cancel_run does."""
    calls = Counter[str]()
    child = _child_flow("pc-child.flow", calls)
    parent = stemd.Flow("pc-parent.flow")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_child(await ctx.start_child(child, {"order": "x"}))

    clock = ManualClock()
    policy = stemd.CancellationPolicy(max_run_duration=60)
    async with open_app(parent, child, clock=clock) as app:
        parent_id = await app.start_workflow(parent, policy=policy)
        await wait_until(_all_waiting, app, "pc-child.flow.go", 1, what="the child")
        await wait_status(app, parent_id, RunStatus.SUSPENDED)
        (kid,) = await _children(app, "pc-child.flow")
        clock.advance(60)
        parent_result = await app.wait_for_completion(parent_id, timeout=5)
        child_result = await app.wait_for_completion(kid.run_id, timeout=5)
    assert parent_result.is_cancelled
    assert child_result.is_cancelled
    assert child_result.state is not None
    assert child_result.state.cancel_reason == "parent cancelled: max_run_duration"


async def test_rewinding_a_parent_starts_a_new_child() -> None:
    """Rewinding a parent to the step that started a child starts a new child."""
    broken = True
    child = stemd.Flow("rw-child.flow")

    @child.step("only")
    async def only(ctx: stemd.FlowContext) -> str:
        if broken:
            raise RuntimeError("child bug")
        return "fixed"

    parent = stemd.Flow("rw-parent.flow")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_child(await ctx.start_child(child, None))

    async with open_app(parent, child) as app:
        parent_id = await app.start_workflow(parent)
        failed = await app.wait_for_completion(parent_id, timeout=5)
        assert failed.is_failed
        broken = False
        assert await app.rewind_run(parent_id, "spawn")
        result = await app.wait_for_completion(parent_id, timeout=5)
        kids = await app.list_runs(workflow="rw-child.flow")
    assert result.value == "fixed"
    assert sorted(k.status for k in kids) == [RunStatus.COMPLETED, RunStatus.FAILED]
    assert {k.parent_run_id for k in kids} == {parent_id}


class StallingStore(MemoryStore):
    """A memory store where creating a child run hangs while ``stall`` is set (a process
    that dies between recording the child's id and creating the child)."""

    def __init__(self) -> None:
        super().__init__()
        self.stall = True
        self.stalled = anyio.Event()

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        if record.parent_run_id is not None and self.stall:
            self.stalled.set()
            await anyio.sleep_forever()
        return await super().create_run(record)


async def test_child_start_interrupted_before_creation_starts_one_child() -> None:
    """A child start interrupted before creation creates the child on re-entry, once."""
    calls = Counter[str]()
    child = _child_flow("stall-child.flow", calls)
    parent = stemd.Flow("stall-parent.flow")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_child(await ctx.start_child(child, {"order": "s"}))

    store = StallingStore()
    async with open_app(parent, child, store=store) as app:
        parent_id = await app.start_workflow(parent)
        await store.stalled.wait()
    (recorded,) = [c for c in await store.get_checkpoints(parent_id) if "@child#" in c.name]
    assert await store.list_runs(workflow="stall-child.flow") == []
    store.stall = False
    async with open_app(parent, child, store=store) as app:
        await wait_until(_all_waiting, app, "stall-child.flow.go", 1, what="the child")
        (kid,) = await _children(app, "stall-child.flow")
        assert recorded.value == f'"{kid.run_id}"'.encode()
        await app.emit("stall-child.flow.go", "ok")
        result = await app.wait_for_completion(parent_id, timeout=5)
        assert len(await _children(app, "stall-child.flow")) == 1
    assert result.value == {"order": "s", "total": 42}
