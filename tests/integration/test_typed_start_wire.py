"""A workflow that declares its params type is checked at `stem.api.start` too: params
of the wrong shape get bad_request and write nothing; plain values of the right shape
start a run whose steps get them decoded (real nats-server, JetStream KV store)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

import stemd

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int


flow = stemd.Flow("wire.typed", params=Order, result=str)


@flow.step("describe")
async def describe(ctx: stemd.FlowContext[Order]) -> str:
    """Returns the order's id and amount; the params must be an Order."""
    assert isinstance(ctx.params, Order)
    return f"{ctx.params.order_id}:{ctx.params.amount}"


@pytest.fixture
async def app(nats: NatsServer) -> AsyncIterator[stemd.App]:
    """A daemon on the test's nats-server serving the wire protocol."""
    options = stemd.AppOptions(nats=nats.url)
    async with stemd.App(store=nats.url, broker=nats.url, workflows=[flow], options=options) as a:
        yield a


async def call(conn: NatsConnection, verb: str, body: Any) -> Any:
    """Send ``body`` to the API verb ``verb``; return the decoded reply."""
    reply = await conn.request(f"stem.api.{verb}", json.dumps(body).encode(), timeout=5)
    return json.loads(reply.data)


async def test_start_checks_the_declared_params_type(app: stemd.App, conn: NatsConnection) -> None:
    """Wrong-shaped params are bad_request naming the field, with no run written; plain
    values of the right shape start a run whose step receives an Order."""
    bad = {"workflow": "wire.typed", "params": {"order_id": "o-1", "amount": "x"}, "run_id": "b"}
    reply = await call(conn, "start", bad)
    assert reply["error"]["code"] == "bad_request"
    assert "params of wire.typed" in reply["error"]["message"]
    assert "$.amount" in reply["error"]["message"]
    assert await app.get_run("b") is None
    good = {"workflow": "wire.typed", "params": {"order_id": "o-1", "amount": 3}, "run_id": "g"}
    assert (await call(conn, "start", good)) == {"run_id": "g", "created": True}
    result = await app.wait_for_completion("g", timeout=10, type=str)
    assert result.value == "o-1:3"
