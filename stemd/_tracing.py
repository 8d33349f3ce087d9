"""OpenTelemetry tracing (optional: ``pip install 'stemd[otel]'``).

One span per execution slice (``stemd.run <workflow>``) and, inside it, one per step
attempt (``stemd.step <step>``), so spans made by user code inside a step nest under it.
The trace continues the one of whoever started the run: :meth:`App.start_workflow` records
the caller's current ``traceparent`` with the run, the NATS API and durable submission read
it from the ``traceparent`` header (:func:`traceparent_from`), and children inherit their
parent's step context. The CLI's NATS client sends its caller's (:func:`trace_headers`).

Reading and writing the header needs no OpenTelemetry: a run started over NATS keeps its
starter's trace context even when the daemon does not trace.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from stemd._engine.observer import (
    LostLease,
    Observer,
    Observers,
    SliceFinished,
    SliceStarted,
    StepFinished,
    StepStarted,
)
from stemd._errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "TRACEPARENT",
    "TracingObserver",
    "current_traceparent",
    "install_tracing",
    "trace_headers",
    "traceparent_from",
    "valid_traceparent",
]

# The W3C Trace Context header, as NATS messages carry it.
TRACEPARENT = "traceparent"
# version 00: trace-id (32 lower-case hex), parent-id (16), flags (2).
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")

try:  # the API is small and optional
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised when the extra is not installed
    trace = None  # type: ignore[assignment]


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the caller's active span, or ``None`` (no OpenTelemetry,
    or no span)."""
    if trace is None:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def valid_traceparent(value: object) -> str | None:
    """``value`` if it is a well-formed W3C ``traceparent`` of version ``00``
    (``00-<32 hex>-<16 hex>-<2 hex>``, lower-case hex, neither id all zeros), surrounding
    whitespace removed; else ``None``."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    match = _TRACEPARENT.fullmatch(text)
    if match is None or not match.group(1).strip("0") or not match.group(2).strip("0"):
        return None
    return text


def traceparent_from(headers: Mapping[str, str] | None) -> str | None:
    """The valid ``traceparent`` of a message's headers (the name in any case), or ``None``:
    a missing or malformed one is ignored, never an error."""
    if not headers:
        return None
    value = headers.get(TRACEPARENT)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == TRACEPARENT), None)
    return valid_traceparent(value)


def trace_headers() -> dict[str, str] | None:
    """The headers that carry the caller's trace context to a daemon, or ``None`` when
    there is none (no OpenTelemetry, or no active span)."""
    traceparent = valid_traceparent(current_traceparent())
    return None if traceparent is None else {TRACEPARENT: traceparent}


def context_of(traceparent: str | None) -> Any:
    """An OpenTelemetry context continuing ``traceparent`` (``None``: a new trace)."""
    if trace is None or not traceparent:
        return None
    return propagate.extract({"traceparent": traceparent})


# The span of the slice, then of the step attempt, running in this task, with the context
# token to detach and what was there before (steps nest: a step may call ctx.step).
_Open = tuple[Any, Any, Any]
_slice: ContextVar[_Open | None] = ContextVar("stemd_trace_slice", default=None)
_step: ContextVar[_Open | None] = ContextVar("stemd_trace_step", default=None)


class TracingObserver(Observer):
    """The engine observer that makes spans, and gives new runs the caller's trace
    context."""

    def __init__(self, tracer_provider: Any = None) -> None:
        if trace is None:
            raise ConfigError("tracing needs OpenTelemetry: pip install 'stemd[otel]'")
        self.tracer = trace.get_tracer("stemd", tracer_provider=tracer_provider)

    def trace_context(self) -> str | None:
        return current_traceparent()

    def slice_started(self, event: SliceStarted) -> None:
        span = self.tracer.start_span(
            f"stemd.run {event.workflow}",
            context=context_of(event.trace),
            kind=SpanKind.CONSUMER,
            attributes={
                "stemd.run_id": event.run_id,
                "stemd.workflow": event.workflow,
                "stemd.attempt": event.attempt,
                "stemd.queue": event.queue,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        _slice.set((span, token, _slice.get()))

    def step_started(self, event: StepStarted) -> None:
        span = self.tracer.start_span(
            f"stemd.step {event.step}",
            attributes={
                "stemd.workflow": event.workflow,
                "stemd.step": event.step,
                "stemd.attempt": event.attempt,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        _step.set((span, token, _step.get()))

    def step_finished(self, event: StepFinished) -> None:
        current = _step.get()
        if current is None:
            return
        span, token, before = current
        _step.set(before)
        otel_context.detach(token)
        span.set_attribute("stemd.step.result", event.result)
        error = event.error
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()

    def slice_finished(self, event: SliceFinished) -> None:
        current = _slice.get()
        if current is None:
            return
        span, token, before = current
        _slice.set(before)
        otel_context.detach(token)
        span.set_attribute("stemd.outcome", event.outcome)
        if event.outcome == "fail":
            span.set_status(Status(StatusCode.ERROR, "run failed"))
        span.end()

    def lease_lost(self, event: LostLease) -> None:
        span = trace.get_current_span()
        span.add_event("stemd.lease_lost")


class _Engine(Protocol):
    @property
    def observers(self) -> Observers: ...


class _OpenApp(Protocol):
    @property
    def engine(self) -> _Engine: ...


def install_tracing(app: _OpenApp, tracer_provider: Any = None) -> TracingObserver:
    """Trace an open ``app``'s slices and steps with ``tracer_provider`` (default: the
    global one), and record the caller's trace context with the runs it starts."""
    observer = TracingObserver(tracer_provider)
    app.engine.observers.subscribe(observer)
    return observer
