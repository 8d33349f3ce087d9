"""Class-based workflows: @stemd.workflow classes, their run method and step methods
(CONTRACT §5)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

import stemd
from stemd._loading import load_workflows
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus


class Order(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    amount: int


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    charge_id: str
    shipped: str


calls: Counter[str] = Counter()
contexts: list[Any] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()
    contexts.clear()


@stemd.workflow("classes.checkout")
class Checkout:
    """Charge, wait a day, ship."""

    def __init__(self) -> None:
        calls["instances"] += 1
        self.seen: list[str] = []

    async def run(self, order: Order, *, context: stemd.ScriptContext | None = None) -> Receipt:
        assert context is not None
        contexts.append(context)
        charge_id = await self.charge(order)
        self.seen.append(charge_id)
        await context.sleep(86_400)
        shipped = await self.ship(charge_id)
        return Receipt(charge_id=charge_id, shipped=shipped)

    @stemd.step
    async def charge(self, order: Order) -> str:
        calls["charge"] += 1
        return f"ch-{order.order_id}-{order.amount}"

    @stemd.step(name="ship-it")
    async def ship(self, charge_id: str, *, context: stemd.StepContext) -> str:
        calls["ship"] += 1
        contexts.append(context)
        return f"{context.step_name}:{charge_id}"


@stemd.workflow("classes.plain")
class Plain:
    async def run(self) -> str:
        return await self.hello()

    @stemd.step
    async def hello(self) -> str:
        calls["hello"] += 1
        return "hello"


async def test_run_is_the_body_and_step_methods_are_checkpoints() -> None:
    """A class workflow's run is a script body: its step methods are checkpoints named
    after the method (or the step's name) that replay without running again, and each
    execution builds a fresh instance."""
    clock = ManualClock()
    async with open_app(Checkout, clock=clock) as app:
        run_id = await app.start_workflow(Checkout, Order(order_id="o-1", amount=5))
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.checkpoints == {"charge": "ch-o-1-5"}
        clock.advance(86_400)
        result = await app.wait_for_completion(run_id, timeout=5, type=Receipt)
        state = await app.get_run(run_id)
    assert result.value == Receipt(charge_id="ch-o-1-5", shipped="ship-it:ch-o-1-5")
    assert state is not None
    assert list(state.checkpoints) == ["charge", "ship-it"]
    assert calls == Counter(instances=2, charge=1, ship=1)


async def test_contexts_are_injected_only_where_declared() -> None:
    """Run gets a ScriptContext through its keyword-only context, a step method a
    StepContext; a run that declares none takes none."""
    clock = ManualClock()
    async with open_app(Checkout, Plain, clock=clock) as app:
        run_id = await Checkout.start(app, Order(order_id="o-2", amount=1))  # type: ignore[attr-defined]
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(86_400)
        assert (await app.wait_for_completion(run_id, timeout=5)).is_completed
        plain = await stemd.handle(Plain).start_and_wait(app, timeout=5)
    assert plain.value == "hello"
    script_ctx, step_ctx = contexts[0], contexts[-1]
    assert isinstance(script_ctx, stemd.ScriptContext)
    assert script_ctx.run_id == run_id
    assert script_ctx.workflow == "classes.checkout"
    assert isinstance(step_ctx, stemd.StepContext)
    assert (step_ctx.run_id, step_ctx.step_name, step_ctx.step_index) == (run_id, "ship-it", 1)


async def test_the_class_is_its_typed_handle_and_registers_by_name() -> None:
    """The decorated class stays a class, has start/start_and_wait, starts by name, and
    stemd.handle gives its script typed from run."""
    assert isinstance(Checkout, type)
    definition = stemd.handle(Checkout)
    assert isinstance(definition, stemd.Script)
    assert definition.name == "classes.checkout"
    assert definition.kind == "script"
    assert definition.params_type is Order
    assert definition.result_type is Receipt
    assert Checkout.start == definition.start  # type: ignore[attr-defined]
    async with open_app(Plain) as app:
        by_class = await Plain.start_and_wait(app, timeout=5)  # type: ignore[attr-defined]
        by_name = await app.start_workflow("classes.plain")
        assert (await app.wait_for_completion(by_name, timeout=5)).value == "hello"
        infos = await app.registered_workflows()
    assert by_class.value == "hello"
    assert [(i.name, i.kind) for i in infos] == [("classes.plain", "script")]


async def test_params_of_the_wrong_type_are_refused_at_start() -> None:
    """A class workflow's params type (run's annotation) is checked at start."""
    async with open_app(Checkout) as app:
        with pytest.raises(stemd.PayloadError, match=r"classes\.checkout"):
            await app.start_workflow("classes.checkout", {"order_id": "o-1"})
        assert await app.list_runs() == []


async def test_a_bound_step_method_given_to_ctx_step() -> None:
    """ctx.step(name, self.method, *args) calls a @stemd.step method bound to the
    instance, as a checkpoint of that name."""

    @stemd.workflow("classes.explicit")
    class Explicit:
        async def run(self, n: int, *, context: stemd.ScriptContext | None = None) -> int:
            assert context is not None
            first = await context.step("double", self.double, n)
            return await context.step("again", self.double, first)

        @stemd.step
        async def double(self, n: int) -> int:
            calls["double"] += 1
            return n * 2

    async with open_app(Explicit) as app:
        result = await stemd.handle(Explicit).start_and_wait(app, 3, timeout=5)
        state = await app.get_run(result.run_id)
    assert result.value == 12
    assert state is not None
    assert state.checkpoints == {"double": 6, "again": 12}


async def test_methods_are_plain_coroutines_outside_a_run() -> None:
    """Outside a run the class is an ordinary class: run and its steps just run."""
    receipt = await Plain().run()
    assert receipt == "hello"
    assert calls["hello"] == 1


def test_the_name_defaults_to_the_class_name() -> None:
    """@stemd.workflow and @stemd.workflow() name the workflow after the class."""

    @stemd.workflow
    class Bare:
        async def run(self) -> None: ...

    @stemd.workflow()
    class Called:
        async def run(self) -> None: ...

    assert stemd.handle(Bare).name == "Bare"
    assert stemd.handle(Called).name == "Called"


class _NoRun:
    pass


class _SyncRun:
    def run(self) -> None: ...


class _TwoParams:
    async def run(self, a: int, b: int) -> None: ...


class _PositionalContext:
    async def run(self, a: int, context: Any = None) -> None: ...


class _RequiredKeyword:
    async def run(self, a: int, *, extra: int) -> None: ...


class _NeedsArgs:
    def __init__(self, db: str) -> None: ...

    async def run(self) -> None: ...


class _HasStart:
    async def run(self) -> None: ...

    @stemd.step
    async def start(self) -> None: ...


@pytest.mark.parametrize(
    ("cls", "why"),
    [
        (_NoRun, "async def run"),
        (_SyncRun, "async def run"),
        (_TwoParams, "at most one parameter"),
        (_PositionalContext, "keyword-only"),
        (_RequiredKeyword, "'extra' is never given"),
        (_NeedsArgs, "no arguments"),
        (_HasStart, "'start'"),
    ],
)
def test_a_class_that_cannot_be_a_workflow_is_refused_at_decoration(cls: type, why: str) -> None:
    """A class without an async run, with a run taking more than params and a
    keyword-only context, that cannot be built without arguments, or that defines a
    handle method itself is refused with a TypeError naming the problem."""
    with pytest.raises(TypeError, match=why):
        stemd.workflow("classes.bad")(cls)
    assert "__stemd_workflow__" not in cls.__dict__


def test_not_a_workflow() -> None:
    """handle() and App refuse what is not a workflow, an undecorated subclass included."""

    class Sub(Plain):
        pass

    with pytest.raises(TypeError, match="not a workflow"):
        stemd.handle(Sub)
    with pytest.raises(TypeError, match="not a workflow"):
        stemd.App(workflows=[Sub])
    with pytest.raises(TypeError):
        stemd.workflow("x")(len)  # type: ignore[arg-type]


def test_the_loader_finds_decorated_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon's module loader registers @stemd.workflow classes at a module's top level,
    as it does flows and scripts; undecorated classes are not workflows."""
    (tmp_path / "wf_mod_classes.py").write_text(
        """
import stemd

@stemd.workflow("c.orders")
class Orders:
    async def run(self, params: dict) -> dict:
        return params

class NotOne:
    async def run(self) -> None: ...

flow = stemd.Flow("c.flow")
"""
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found, _ = load_workflows(["wf_mod_classes"], use_entry_points=False)
    assert sorted(w.name for w in found) == ["c.flow", "c.orders"]
    orders = next(w for w in found if w.name == "c.orders")
    assert isinstance(orders, stemd.Script)
    assert orders.kind == "script"
