"""Trace context over NATS: the `traceparent` header of a `start` request or of a durable
submission is recorded with the run (a malformed one is ignored), and the CLI's NATS client
sends its caller's."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import stemd
from stemd._cli.client import NatsClient
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
MALFORMED = [
    "",
    "garbage",
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # unknown version
    "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper-case hex
    "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",  # trace id too short
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",  # parent id too short
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1",  # flags too short
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero parent id
    TRACEPARENT + "-00",  # trailing field
]

flow = stemd.Flow("traced.api.flow")


@flow.step("only")
async def only(ctx: stemd.FlowContext) -> Any:
    """Returns the params."""
    return ctx.params


@pytest.fixture
async def app(nats: NatsServer) -> AsyncIterator[stemd.App]:
    """A daemon on the test's nats-server: API, durable submission, KV store."""
    async with stemd.App(
        store=nats.url, broker=nats.url, workflows=[flow], options=stemd.AppOptions(nats=nats.url)
    ) as a:
        yield a


async def recorded_trace(app: stemd.App, run_id: str) -> str | None:
    """The trace context stored with the run (read straight from the store)."""
    rec = await app.store.get_run(run_id)
    assert rec is not None
    return rec.trace


async def start(conn: NatsConnection, run_id: str, headers: dict[str, str] | None) -> Any:
    """Start run ``run_id`` over the API with ``headers``; return the decoded reply."""
    body = json.dumps({"workflow": "traced.api.flow", "run_id": run_id}).encode()
    reply = await conn.request("stem.api.start", body, headers=headers, timeout=5)
    return json.loads(reply.data)


async def test_start_records_the_requests_traceparent(app: stemd.App, conn: NatsConnection) -> None:
    """A start request's well-formed traceparent header is stored with the run."""
    assert await start(conn, "t-ok", {"traceparent": TRACEPARENT}) == {
        "run_id": "t-ok",
        "created": True,
    }
    assert await recorded_trace(app, "t-ok") == TRACEPARENT
    assert await start(conn, "t-none", None) == {"run_id": "t-none", "created": True}
    assert await recorded_trace(app, "t-none") is None


async def test_start_ignores_a_malformed_traceparent(app: stemd.App, conn: NatsConnection) -> None:
    """A malformed traceparent header is ignored: the run starts, with no trace context."""
    for i, value in enumerate(MALFORMED):
        run_id = f"t-bad-{i}"
        assert await start(conn, run_id, {"traceparent": value}) == {
            "run_id": run_id,
            "created": True,
        }, value
        assert await recorded_trace(app, run_id) is None, value


async def test_a_submission_records_its_traceparent(app: stemd.App, conn: NatsConnection) -> None:
    """A durable submission's traceparent header is stored with the run; a malformed one not."""
    good = {"Nats-Msg-Id": "s-ok", "traceparent": TRACEPARENT}
    await conn.js_publish("stem.submit.traced.api.flow", b"1", headers=good)
    bad = {"Nats-Msg-Id": "s-bad", "traceparent": MALFORMED[3]}
    await conn.js_publish("stem.submit.traced.api.flow", b"2", headers=bad)

    async def both_started() -> bool:
        return all([await app.get_run("s-ok"), await app.get_run("s-bad")])

    await wait_until(both_started, what="both submissions to start")
    assert await recorded_trace(app, "s-ok") == TRACEPARENT
    assert await recorded_trace(app, "s-bad") is None
    result = await app.wait_for_completion("s-bad", timeout=5)
    assert result.value == 2


async def test_the_cli_client_sends_its_callers_trace(
    app: stemd.App, conn: NatsConnection, nats: NatsServer
) -> None:
    """The CLI's NATS client sends the active span's traceparent; with no span, none."""
    client = NatsClient(conn, nats.url)
    tracer = trace.get_tracer("test", tracer_provider=TracerProvider())
    with tracer.start_as_current_span("operator request") as span:
        run_id, created = await client.start("traced.api.flow", None, "c-traced", None)
    assert (run_id, created) == ("c-traced", True)
    recorded = await recorded_trace(app, run_id)
    assert recorded is not None
    assert recorded.split("-")[1] == f"{span.get_span_context().trace_id:032x}"
    assert recorded.split("-")[2] == f"{span.get_span_context().span_id:016x}"
    await client.start("traced.api.flow", None, "c-plain", None)
    assert await recorded_trace(app, "c-plain") is None
