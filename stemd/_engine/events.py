"""In-process notifications of run status changes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

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
        # The futures of the tasks waiting for a run to end here, per run.
        self._ended: dict[str, set[asyncio.Future[bool]]] = {}

    def listen(self, fn: Callable[[RunEvent, bytes | None], None]) -> Callable[[], None]:
        """Call ``fn(event, raw_result)`` on every change; returns a function that stops it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn)

    def ended(self, run_id: str) -> asyncio.Future[bool]:
        """A future set to ``True`` when ``run_id`` next ends (completes, fails or is
        cancelled) in this process; :meth:`within` awaits it, :meth:`forget` drops it."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._ended.setdefault(run_id, set()).add(done)
        return done

    def forget(self, run_id: str, done: asyncio.Future[bool]) -> None:
        """Stop waiting with ``done`` (from :meth:`ended`): nothing is kept for a run that
        never ends here."""
        waiters = self._ended.get(run_id)
        if waiters is not None:
            waiters.discard(done)
            if not waiters:
                del self._ended[run_id]

    @staticmethod
    async def within(done: asyncio.Future[bool], seconds: float) -> bool:
        """Whether the run ended, waiting for ``done`` (from :meth:`ended`) at most
        ``seconds``: with a timer on the loop, not a cancel scope (many tasks poll so)."""
        if not done.done():
            timer = asyncio.get_running_loop().call_later(seconds, _expire, done)
            try:
                await done
            finally:
                timer.cancel()
        return done.result()

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
            for done in self._ended.pop(run_id, ()):
                if not done.done():
                    done.set_result(True)


def _expire(done: asyncio.Future[bool]) -> None:
    if not done.done():
        done.set_result(False)
