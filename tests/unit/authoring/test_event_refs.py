"""stemd.Event: a topic and its payload type, emitted, sent and waited on (CONTRACT §5)."""

from __future__ import annotations

import msgspec
import pytest

import stemd
from tests.helpers import open_app, wait_status

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus


class Paid(msgspec.Struct, frozen=True, kw_only=True):
    order_id: str
    amount: int


paid = stemd.Event("refs.orders.paid", Paid)
note = stemd.Event("refs.note")

flow = stemd.Flow("refs.flow")


@flow.step("await-payment")
async def await_payment(ctx: stemd.FlowContext) -> str:
    """Waits for the payment event; returns its order id and amount."""
    payment = await paid.wait(ctx)
    assert isinstance(payment, Paid)
    return f"{payment.order_id}:{payment.amount}"


@stemd.script("refs.script")
async def script(ctx: stemd.ScriptContext) -> object:
    """Waits for a payment, then a note; returns the amount and the note."""
    payment = await paid.wait(ctx)
    assert isinstance(payment, Paid)
    plain = await note.wait(ctx)
    return {"amount": payment.amount, "note": plain}


async def test_emit_resumes_a_flow_step_with_the_payload_decoded_into_the_type() -> None:
    """event.emit delivers to the runs waiting on its topic, which get the payload
    decoded into the event's type from event.wait."""
    async with open_app(flow) as app:
        run_id = await flow.start(app)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await paid.emit(app, Paid(order_id="o-1", amount=42)) == 1
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "o-1:42"


async def test_a_script_body_waits_on_typed_and_plain_events() -> None:
    """event.wait works in a script body; an Event without a type gives plain values."""
    async with open_app(script) as app:
        run_id = await script.start(app)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert await paid.emit(app, {"order_id": "o-2", "amount": 7}) == 1
        state = await wait_status(app, run_id, RunStatus.SUSPENDED)
        assert state.wait_topic == "refs.note"
        assert await note.emit(app, {"any": ["thing"]}) == 1
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == {"amount": 7, "note": {"any": ["thing"]}}


async def test_emit_refuses_a_value_that_does_not_fit_the_type() -> None:
    """A typed Event refuses to emit a value that does not fit its type (PayloadError)
    and delivers nothing: the waiting run still waits."""
    async with open_app(flow) as app:
        run_id = await flow.start(app)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        with pytest.raises(stemd.PayloadError, match=r"refs\.orders\.paid"):
            await paid.emit(app, {"order_id": "o-1", "amount": "lots"})  # type: ignore[arg-type]
        state = await app.get_run(run_id)
        assert state is not None
        assert state.status is RunStatus.SUSPENDED
        assert [r.run_id for r in await app.runs_waiting_on(paid.topic)] == [run_id]


async def test_emit_with_no_waiter_returns_zero() -> None:
    """An emit that finds no waiter returns 0, as app.emit does."""
    async with open_app(flow) as app:
        assert await paid.emit(app, Paid(order_id="o-1", amount=1)) == 0


async def test_wait_timeout_raises_event_timeout_on_re_entry() -> None:
    """event.wait passes its timeout on: when it passes first the step gets EventTimeout."""
    from stemd.testing import ManualClock

    timed = stemd.Flow("refs.timed")

    @timed.step("wait")
    async def wait(ctx: stemd.FlowContext) -> str:
        try:
            await paid.wait(ctx, timeout=30)
        except stemd.EventTimeout:
            return "timed out"
        return "paid"

    clock = ManualClock()
    async with open_app(timed, clock=clock) as app:
        run_id = await timed.start(app)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        clock.advance(30)
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "timed out"


def test_an_event_needs_a_topic() -> None:
    """An Event's topic must be a non-empty string."""
    with pytest.raises(ValueError, match="topic"):
        stemd.Event("")
    with pytest.raises(ValueError, match="topic"):
        stemd.Event(None)  # type: ignore[call-overload]
    assert paid.topic == "refs.orders.paid"
    assert paid.type is Paid
    assert repr(paid) == "Event('refs.orders.paid', Paid)"


async def test_send_delivers_to_the_one_run_addressed() -> None:
    """event.send delivers the value to the run it names (app.send), which gets it
    decoded into the event's type."""
    async with open_app(flow) as app:
        run_id = await flow.start(app)
        other = await flow.start(app)
        await wait_status(app, run_id, RunStatus.SUSPENDED)
        await wait_status(app, other, RunStatus.SUSPENDED)
        await paid.send(app, run_id, Paid(order_id="o-3", amount=3))
        result = await app.wait_for_completion(run_id, timeout=5)
        assert result.value == "o-3:3"
        state = await app.get_run(other)
    assert state is not None
    assert state.status is RunStatus.SUSPENDED


async def test_send_refuses_a_value_that_does_not_fit_before_calling_the_app() -> None:
    """event.send checks the value's type before it calls app.send."""

    class NoSend:
        calls = 0

        async def send(
            self, run_id: str, topic: str, payload: object = None, key: object = None
        ) -> bool:
            NoSend.calls += 1
            return True

    with pytest.raises(stemd.PayloadError):
        await paid.send(NoSend(), "r-1", {"order_id": 1})  # type: ignore[arg-type]
    assert NoSend.calls == 0
    assert await paid.send(NoSend(), "r-1", Paid(order_id="o", amount=1), key="k") is True
    assert NoSend.calls == 1
