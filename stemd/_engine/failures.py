"""Failures a workflow handles: an attempt past its step's timeout, a step's failure for
good recorded so that a replay raises it again (a script's :class:`~stemd.StepFailed`),
and a flow's compensations.

A flow step may declare ``compensate=``: when a later step fails for good, the
compensations of the steps that completed run in reverse order, each once (recorded as
``<step>@undo#0``), and the run then fails with the step's error. The failure is recorded
first (``<step>@failed#0``), so a slice that crashes while compensating resumes the
compensations instead of running the failed step again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import anyio
import msgspec

from stemd._authoring.context import FlowContext
from stemd._authoring.runtime import Runtime, frame
from stemd._engine.replay import failed_key
from stemd._model import ErrorInfo
from stemd._store.base import Fail

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stemd._authoring.definitions import Flow, FlowStep
    from stemd._codec import Codec
    from stemd._engine.interrupts import Exhausted
    from stemd._model import Retry

__all__ = [
    "Execution",
    "compensate",
    "decode_error",
    "encode_error",
    "record_failure",
    "timed",
    "undo_key",
]


class Execution(Runtime, Protocol):
    """What handling a failure needs of the execution it happens in."""

    codec: Codec
    checkpoints: dict[str, bytes]
    no_waits: set[str]

    async def save(self, name: str, value: bytes) -> None: ...

    async def call_step(
        self,
        name: str,
        call: Callable[[int], Awaitable[Any]],
        retry: Retry | None,
        timeout: float | None = None,
    ) -> bytes: ...


def timed(
    call: Callable[[int], Awaitable[Any]], attempt: int, timeout: float | None, name: str
) -> Awaitable[Any]:
    """``call(attempt)``, cancelled after ``timeout`` seconds: then a TimeoutError, which
    counts as a failed attempt of step ``name``. Without a timeout, ``call(attempt)``
    itself (no coroutine around it)."""
    if timeout is None:
        return call(attempt)
    return _timed(call, attempt, timeout, name)


async def _timed(
    call: Callable[[int], Awaitable[Any]], attempt: int, timeout: float, name: str
) -> Any:
    with anyio.move_on_after(timeout):
        return await call(attempt)
    raise TimeoutError(f"step {name} took longer than its timeout ({timeout:g} s)")


def encode_error(codec: Codec, error: ErrorInfo) -> bytes:
    """``error`` as a checkpoint value."""
    return codec.encode(msgspec.to_builtins(error))


def decode_error(codec: Codec, raw: bytes) -> ErrorInfo:
    """The error recorded by :func:`encode_error`."""
    return msgspec.convert(codec.decode(raw), ErrorInfo)


def undo_key(step: str) -> str:
    """The checkpoint of the compensation of ``step``."""
    return f"{step}@undo#0"


async def compensate(ex: Execution, flow: Flow[Any, Any], failed: FlowStep, params: Any) -> Fail:
    """Undo the completed steps before ``failed`` (recorded as failed) in reverse order,
    each once; return the run's failure, the failed step's error.

    Raises:
        Interrupt: a compensation suspends the slice (a retry), or failed for good (the
            run then fails with its error).
    """
    error = decode_error(ex.codec, ex.checkpoints[failed_key(failed.name)])
    for st in reversed(flow.steps[: failed.index]):
        undo = st.compensate
        if undo is None or undo_key(st.name) in ex.checkpoints:
            continue
        raw = ex.checkpoints.get(st.name)
        done = None if raw is None else ex.codec.decode(raw)

        async def call(attempt: int, st: FlowStep = st, done: Any = done) -> Any:
            assert st.compensate is not None
            ctx = FlowContext(ex, st.name, st.index, params, done, attempt)
            token = frame.set((ex, st.name))
            ex.no_waits.add(st.name)
            try:
                return await st.compensate(ctx)
            finally:
                ex.no_waits.discard(st.name)
                frame.reset(token)

        encoded = await ex.call_step(f"{st.name}@undo", call, st.retry, st.timeout)
        await ex.save(undo_key(st.name), encoded)
    return Fail(error=error)


async def record_failure(ex: Execution, key: str, stop: Exhausted) -> ErrorInfo:
    """Record that the step called ``key`` failed for good; return its error."""
    error = stop.failed.error
    await ex.save(failed_key(key), encode_error(ex.codec, error))
    return error
