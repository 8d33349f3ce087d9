"""In-process notifications of run status changes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from stemd._model import ErrorInfo, RunStatus

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RunEvent", "RunEvents"]


class RunEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A run changed status (published on ``stem.events.run.<run_id>`` over NATS)."""

    run_id: str
    workflow: str
    status: RunStatus
    result: Any = None
    error: ErrorInfo | None = None
    cancel_reason: str | None = None


class RunEvents:
    """Fans status changes out to listeners and to tasks waiting for a run to end."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[RunEvent, bytes | None], None]] = []
        self._ended: dict[str, anyio.Event] = {}

    def listen(self, fn: Callable[[RunEvent, bytes | None], None]) -> Callable[[], None]:
        """Call ``fn(event, raw_result)`` on every change; returns a function that stops it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    def ended(self, run_id: str) -> anyio.Event:
        """An event set the next time ``run_id`` ends (completes, fails or is cancelled)."""
        event = self._ended.get(run_id)
        if event is None:
            event = self._ended[run_id] = anyio.Event()
        return event

    def publish(
        self,
        run_id: str,
        workflow: str,
        status: RunStatus,
        *,
        raw_result: bytes | None = None,
        error: ErrorInfo | None = None,
        cancel_reason: str | None = None,
    ) -> None:
        if self._listeners:
            event = RunEvent(
                run_id=run_id,
                workflow=workflow,
                status=status,
                error=error,
                cancel_reason=cancel_reason,
            )
            for fn in list(self._listeners):
                fn(event, raw_result)
        if status.is_terminal:
            waiter = self._ended.pop(run_id, None)
            if waiter is not None:
                waiter.set()
