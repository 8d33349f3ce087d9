"""Typed handles: flow.start / start_and_wait on flows and scripts, params checked at
start and decoded for steps, results decoded on the way out (CONTRACT §5)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import msgspec
import pytest

import stemd
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus


class OrderParams(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    amount: int


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    charged: int


@dataclasses.dataclass
class Shipment:
    carrier: str
    parcels: int


orders = stemd.Flow("handles.orders", params=OrderParams, result=Receipt)
seen_params: list[object] = []


@orders.step("charge")
async def charge(ctx: stemd.FlowContext[OrderParams]) -> int:
    """Records the params; returns the amount."""
    seen_params.append(ctx.params)
    return ctx.params.amount


@orders.step("receipt")
async def receipt(ctx: stemd.FlowContext[OrderParams]) -> Receipt:
    """Returns a receipt of the order for the amount charged."""
    return Receipt(order_id=ctx.params.order_id, charged=ctx.previous_result)


@stemd.script("handles.total")
async def total(ctx: stemd.ScriptContext, params: OrderParams) -> Receipt:
    """Returns a receipt charging twice the amount."""
    return Receipt(order_id=params.order_id, charged=params.amount * 2)


@stemd.script("handles.noparams")
async def noparams(ctx: stemd.ScriptContext) -> str:
    """Returns ``"done"``."""
    return "done"


@pytest.fixture(autouse=True)
def _reset() -> None:
    seen_params.clear()


async def test_flow_start_and_wait_returns_the_result_decoded_into_its_type() -> None:
    """start_and_wait on a Flow declared with result=Receipt returns a Receipt value."""
    async with open_app(orders) as app:
        result = await orders.start_and_wait(app, OrderParams(order_id="o-1", amount=5), 5)
    assert result.is_completed
    assert result.value == Receipt(order_id="o-1", charged=5)
    assert isinstance(result.value, Receipt)


async def test_flow_steps_get_params_decoded_into_the_declared_type() -> None:
    """A flow declared with params=T gives its steps ctx.params as a T, whether the run
    was started with a T or with plain values of its shape."""
    async with open_app(orders) as app:
        one = await orders.start(app, OrderParams(order_id="o-1", amount=1))
        two = await app.start_workflow("handles.orders", {"order_id": "o-2", "amount": 2})
        assert (await app.wait_for_completion(one, timeout=5)).is_completed
        assert (await app.wait_for_completion(two, timeout=5)).is_completed
    assert sorted(seen_params, key=lambda p: p.order_id) == [  # type: ignore[attr-defined]
        OrderParams(order_id="o-1", amount=1),
        OrderParams(order_id="o-2", amount=2),
    ]


async def test_flow_params_of_a_dataclass_type() -> None:
    """A dataclass params type works like a Struct."""
    flow = stemd.Flow("handles.ship", params=Shipment)

    @flow.step("count")
    async def count(ctx: stemd.FlowContext[Shipment]) -> str:
        assert isinstance(ctx.params, Shipment)
        return f"{ctx.params.carrier}:{ctx.params.parcels}"

    async with open_app(flow) as app:
        result = await flow.start_and_wait(app, Shipment(carrier="dhl", parcels=3), timeout=5)
    assert result.value == "dhl:3"


async def test_flow_without_declared_types_keeps_plain_params() -> None:
    """A flow declared without params= still gives steps the plain decoded params."""
    flow = stemd.Flow("handles.plain")

    @flow.step("echo")
    async def echo(ctx: stemd.FlowContext) -> object:
        return ctx.params

    async with open_app(flow) as app:
        result = await flow.start_and_wait(app, {"a": [1, 2]}, timeout=5)
    assert result.value == {"a": [1, 2]}


@pytest.mark.parametrize(
    "params",
    [None, {"order_id": "o-1"}, {"order_id": "o-1", "amount": "five"}, ["o-1", 5], "o-1"],
)
async def test_params_of_the_wrong_type_are_refused_at_start(params: object) -> None:
    """Params that do not fit the declared type are refused at start — through the
    handle and through App.start_workflow by name — with a PayloadError naming the
    workflow, and nothing is written."""
    async with open_app(orders, total) as app:
        with pytest.raises(stemd.PayloadError, match=r"params of handles\.orders"):
            await orders.start(app, params, run_id="bad-flow")  # type: ignore[arg-type]
        with pytest.raises(stemd.PayloadError, match=r"params of handles\.orders"):
            await app.start_workflow("handles.orders", params, run_id="bad-flow")
        with pytest.raises(stemd.PayloadError, match=r"params of handles\.total"):
            await app.start_workflow("handles.total", params, run_id="bad-script")
        with pytest.raises(stemd.PayloadError, match=r"params of handles\.total"):
            await total.start_and_wait(app, params, timeout=1)  # type: ignore[arg-type]
        assert await app.get_run("bad-flow") is None
        assert await app.get_run("bad-script") is None
        assert await app.list_runs() == []


async def test_a_typed_flow_whose_stored_params_do_not_decode_fails_naming_it(
    tmp_path: object,
) -> None:
    """A run written by a client that knows no type, with params that do not fit the
    flow's params type, fails on the worker with a PayloadError naming the flow."""
    store = f"sqlite:///{tmp_path}/typed.db"
    async with stemd.App(store=store, workers=False) as client:
        run_id = await client.start_workflow("handles.orders", {"order_id": 7})
    async with open_app(orders, store=store) as app:
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "PayloadError"
    assert "params of handles.orders" in result.error.message
    assert seen_params == []


async def test_script_handles_are_typed_from_the_function() -> None:
    """A script's handle checks params against its second parameter's annotation and
    decodes the result into its return annotation; a script without params starts
    with none."""
    async with open_app(total, noparams) as app:
        result = await total.start_and_wait(app, OrderParams(order_id="o-9", amount=4), 5)
        assert result.value == Receipt(order_id="o-9", charged=8)
        plain = await noparams.start_and_wait(app, timeout=5)
        assert plain.value == "done"
        run_id = await noparams.start(app)
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "done"
    assert total.params_type is OrderParams
    assert total.result_type is Receipt


async def test_start_forwards_the_start_options() -> None:
    """Start takes start_workflow's options: a given run_id is used, and starting it
    again returns it and starts nothing; policy and ttl are recorded."""
    policy = stemd.CancellationPolicy(max_run_duration=3600)
    async with open_app(total) as app:
        params = OrderParams(order_id="o-1", amount=1)
        run_id = await total.start(app, params, run_id="order-o-1", policy=policy, ttl=60)
        assert run_id == "order-o-1"
        again = await total.start_and_wait(app, params, timeout=5, run_id="order-o-1")
        assert again.run_id == "order-o-1"
        assert again.is_completed
        state = await app.get_run(run_id)
        assert state is not None
        assert state.policy == policy
        assert state.ttl == 60
        assert len(await app.list_runs()) == 1


async def test_start_and_wait_times_out_and_the_run_goes_on() -> None:
    """start_and_wait returns timed_out=True when the run outlives the timeout; the run
    stays suspended."""
    flow = stemd.Flow("handles.slow", result=str)

    @flow.step("nap")
    async def nap(ctx: stemd.FlowContext) -> str:
        await ctx.sleep(60)
        return "rested"

    clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC))
    async with open_app(flow, clock=clock) as app:
        result = await flow.start_and_wait(app, timeout=0.2)
        assert result.timed_out
        await wait_status(app, result.run_id, RunStatus.SUSPENDED)
        clock.advance(60)
        done = await app.wait_for_completion(result.run_id, timeout=5, type=str)
    assert done.value == "rested"


async def test_a_handle_the_app_does_not_serve_is_unknown() -> None:
    """Starting a Flow the app was not given raises UnknownWorkflow and writes nothing."""
    async with open_app(total) as app:
        with pytest.raises(stemd.UnknownWorkflow):
            await orders.start(app, OrderParams(order_id="o-1", amount=1))
        assert await app.list_runs() == []


async def test_a_child_started_with_params_of_the_wrong_type_fails_the_step() -> None:
    """ctx.start_child checks the child's params type too: the parent's step raises
    PayloadError and no child is written."""
    parent = stemd.Flow("handles.parent")

    @parent.step("spawn")
    async def spawn(ctx: stemd.FlowContext) -> str:
        return await ctx.start_child(total, {"order_id": "o-1", "amount": "lots"})

    async with open_app(parent, total) as app:
        result = await parent.start_and_wait(app, timeout=5)
        runs = await app.list_runs(workflow="handles.total")
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "PayloadError"
    assert result.error.step == "spawn"
    assert runs == []


@pytest.mark.parametrize("name", ["Event", "workflow", "handle"])
def test_the_new_names_are_exported(name: str) -> None:
    """Event, workflow and handle are attributes of stemd and listed in __all__."""
    assert hasattr(stemd, name)
    assert name in stemd.__all__
