"""OpenTelemetry tracing: spans per slice and per step, continuing the starter's trace."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import stemd
from stemd._tracing import install_tracing, trace_headers, traceparent_from
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
user_tracer = trace.get_tracer("user-code", tracer_provider=provider)

traced = stemd.Flow("traced.flow")


@traced.step("call-api")
async def call_api(ctx: stemd.FlowContext) -> str:
    """Opens a user span; fails its first attempt."""
    with user_tracer.start_as_current_span("http GET /inventory"):
        pass
    if ctx.attempt == 1:
        raise RuntimeError("inventory service down")
    return "ok"


@traced.step("nap")
async def nap(ctx: stemd.FlowContext) -> str:
    """Sleeps 10 s, then starts a child and waits for it."""
    await ctx.sleep(10)
    child = await ctx.start_child(traced_child, {"n": 1})
    return await ctx.wait_child(child, type=str)


@stemd.script("traced.child")
async def traced_child(ctx: stemd.ScriptContext, params: Any) -> str:
    """Returns ``"child-done"``."""
    return "child-done"


async def test_slices_and_steps_are_spans_in_the_starters_trace() -> None:
    """Every slice and step attempt is a span in the trace of the span that started the run
    (children included); user spans nest under their step; failures are marked."""
    exporter.clear()
    traced.steps[0].retry = stemd.Retry(max_attempts=2, backoff=1, jitter=False)
    clock = ManualClock()
    async with open_app(traced, traced_child, clock=clock) as app:
        install_tracing(app, provider)
        with user_tracer.start_as_current_span("checkout request") as root:
            run_id = await app.start_workflow(traced)
        trace_id = root.get_span_context().trace_id
        await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)
        clock.advance(2)  # the retry

        async def retried() -> bool:
            state = await app.get_run(run_id)
            return (
                state is not None
                and state.status is stemd.RunStatus.SUSPENDED
                and (state.checkpoints.get("call-api") == "ok")
            )

        await wait_until(retried, what="the retried step to succeed and the run to sleep")
        clock.advance(11)  # the sleep
        result = await app.wait_for_completion(run_id, timeout=5)
        assert result.value == "child-done"

    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names.count("stemd.step call-api") == 2
    assert "stemd.run traced.child" in names
    assert "stemd.step nap" in names
    stemd_spans = [s for s in spans if s.name.startswith("stemd.")]
    assert {s.context.trace_id for s in stemd_spans} == {trace_id}

    by_id = {s.context.span_id: s for s in spans}
    failed = [s for s in spans if s.name == "stemd.step call-api" and not s.status.is_ok]
    assert len(failed) == 1
    assert failed[0].status.status_code is StatusCode.ERROR
    assert failed[0].attributes["stemd.step.result"] == "error"
    for user_span in (s for s in spans if s.name == "http GET /inventory"):
        assert user_span.parent is not None
        assert by_id[user_span.parent.span_id].name == "stemd.step call-api"
    for step_span in (s for s in spans if s.name.startswith("stemd.step")):
        assert step_span.parent is not None
        assert by_id[step_span.parent.span_id].name.startswith("stemd.run")
    outcomes = [s.attributes["stemd.outcome"] for s in spans if s.name == "stemd.run traced.flow"]
    assert outcomes[0] == "retry"
    assert outcomes[-1] == "complete"
    assert "suspend" in outcomes


async def test_without_tracing_runs_record_no_trace() -> None:
    """Runs started while tracing is not installed carry no trace context."""
    async with open_app(traced_child) as app:
        with user_tracer.start_as_current_span("outside"):
            run_id = await app.start_workflow(traced_child, {})
        rec = await app.store.get_run(run_id)
        assert rec is not None
        assert rec.trace is None


async def test_app_with_tracing_records_the_callers_trace_context() -> None:
    """AppOptions(tracing=True) stores the starter's traceparent with the run (and its children's
    starts carry it on)."""
    async with open_app(traced_child, options=stemd.AppOptions(tracing=True)) as app:
        with user_tracer.start_as_current_span("submit") as span:
            run_id = await app.start_workflow(traced_child, {})
        rec = await app.store.get_run(run_id)
    trace_hex = format(span.get_span_context().trace_id, "032x")
    assert rec is not None
    assert rec.trace is not None
    assert rec.trace.startswith(f"00-{trace_hex}-")


def test_traceparent_from_headers_is_validated_and_found_in_any_case() -> None:
    """The traceparent header is found in any case and trimmed; a bad or missing one: None."""
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert traceparent_from({"traceparent": good}) == good
    assert traceparent_from({"Traceparent": f" {good} "}) == good
    assert traceparent_from({"traceparent": good.replace("-01", "-1")}) is None
    assert traceparent_from({"traceparent": "00-" + "0" * 32 + good[35:]}) is None
    assert traceparent_from({"Nats-Msg-Id": "x"}) is None
    assert traceparent_from(None) is None


def test_trace_headers_carry_the_active_span_only() -> None:
    """trace_headers gives the active span's traceparent, and None outside any span."""
    assert trace_headers() is None
    with user_tracer.start_as_current_span("caller") as span:
        headers = trace_headers()
    assert headers is not None
    trace_hex = format(span.get_span_context().trace_id, "032x")
    assert headers["traceparent"].startswith(f"00-{trace_hex}-")
