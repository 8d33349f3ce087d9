"""Versioned payloads: a schema version stored beside the value, a decoder per version."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import stemd
from tests.helpers import open_app, wait_status

pytestmark = pytest.mark.anyio


class OrderV1(msgspec.Struct):
    id: str
    cents: int


class OrderV2(msgspec.Struct):
    id: str
    amount: float
    currency: str


def upgrade_v1(plain: Any) -> OrderV2:
    """An OrderV2 from a version-1 order (cents to EUR)."""
    v1 = msgspec.convert(plain, OrderV1)
    return OrderV2(id=v1.id, amount=v1.cents / 100, currency="EUR")


orders = stemd.Versioned(2, {1: upgrade_v1, 2: OrderV2}, legacy=1)

shop = stemd.Flow("versioned.shop")


@shop.step("take")
async def take(ctx: stemd.FlowContext) -> dict[str, Any]:
    """Waits for an order of any version; returns it as a dict."""
    order = await ctx.wait_for_event("versioned.order", type=orders)
    assert isinstance(order, OrderV2)
    return {"id": order.id, "amount": order.amount, "currency": order.currency}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (orders.wrap(OrderV2(id="o2", amount=1.5, currency="USD")), ("o2", 1.5, "USD")),
        (orders.wrap({"id": "o1", "cents": 250}, version=1), ("o1", 2.5, "EUR")),
        ({"id": "legacy", "cents": 100}, ("legacy", 1.0, "EUR")),
    ],
    ids=["current", "older-version", "unversioned-legacy"],
)
async def test_every_stored_version_decodes_into_the_current_type(
    payload: Any, expected: tuple[str, float, str]
) -> None:
    """Events stored as v2, v1 or before versioning all reach the step as an OrderV2."""
    async with open_app(shop) as app:
        run_id = await app.start_workflow(shop)
        await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)
        assert await app.emit("versioned.order", payload) == 1
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.is_completed, result.error
    assert (result.value["id"], result.value["amount"], result.value["currency"]) == expected


async def test_unknown_version_fails_the_step_with_a_clear_error() -> None:
    """A value of a version with no decoder is a PayloadError listing the known versions."""
    async with open_app(shop) as app:
        run_id = await app.start_workflow(shop)
        await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)
        await app.emit("versioned.order", orders.wrap({"id": "x"}, version=7))
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert "unknown schema version 7 (known: 1, 2)" in result.error.message


def test_results_decode_through_versioned_and_unversioned_values_need_a_legacy() -> None:
    """wait_for_completion-style decoding accepts Versioned; without a legacy version,
    unversioned values are refused."""
    from stemd._codec import CodecChain

    codec = CodecChain()
    raw = codec.encode(orders.wrap(OrderV2(id="a", amount=2.0, currency="EUR")))
    assert codec.decode(raw, type=orders) == OrderV2(id="a", amount=2.0, currency="EUR")
    strict = stemd.Versioned(2, {2: OrderV2})
    with pytest.raises(stemd.PayloadError, match="no schema version"):
        strict.decode({"id": "a"})
    with pytest.raises(ValueError, match="no decoder for the current version 3"):
        stemd.Versioned(3, {2: OrderV2})
