"""Hooks through which metrics and tracing watch the engine (no-ops unless installed)."""

from __future__ import annotations

from typing import Any, Protocol

from stemd.store.base import RunRecord

__all__ = ["FanOut", "Observer"]


class Observer(Protocol):
    """Told about what the engine does; every method must be cheap and must not raise.

    ``slice_started`` and ``slice_finished`` bracket each execution slice, in the task that
    runs it (so an observer may set context variables in one and reset them in the other);
    ``step_finished`` is called inside that bracket for each step attempt.
    """

    def run_started(self, workflow: str) -> None:
        """A run was created."""
        ...

    def slice_started(self, record: RunRecord) -> Any:
        """A slice of ``record`` (just claimed) begins; the result is handed back to
        :meth:`slice_finished`."""
        ...

    def step_started(self, workflow: str, step: str, attempt: int) -> Any:
        """An attempt of a step begins, in the task that runs it; the result is handed
        back to :meth:`step_finished`."""
        ...

    def step_finished(
        self,
        handle: Any,
        workflow: str,
        step: str,
        seconds: float,
        result: str,
        error: BaseException | None,
    ) -> None:
        """One attempt of a step ended: ``result`` is ``ok``, ``error`` (``error`` is what
        it raised) or ``suspended`` (it slept or waited; it runs again on resume)."""
        ...

    def slice_finished(self, handle: Any, workflow: str, outcome: str, seconds: float) -> None:
        """The slice ended: ``outcome`` is what was committed (complete, suspend, retry,
        fail, release) or ``abandoned`` (lease lost, cancelled: nothing committed)."""
        ...

    def lease_lost(self, workflow: str) -> None:
        """A slice was abandoned because its lease was lost."""
        ...


class FanOut:
    """Several observers behind one."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = list(observers)

    def run_started(self, workflow: str) -> None:
        for o in self.observers:
            o.run_started(workflow)

    def slice_started(self, record: RunRecord) -> Any:
        return [o.slice_started(record) for o in self.observers]

    def step_started(self, workflow: str, step: str, attempt: int) -> Any:
        return [o.step_started(workflow, step, attempt) for o in self.observers]

    def step_finished(
        self,
        handle: Any,
        workflow: str,
        step: str,
        seconds: float,
        result: str,
        error: BaseException | None,
    ) -> None:
        for o, h in reversed(list(zip(self.observers, handle, strict=True))):
            o.step_finished(h, workflow, step, seconds, result, error)

    def slice_finished(self, handle: Any, workflow: str, outcome: str, seconds: float) -> None:
        # Reverse order: context set up by later observers is undone first.
        for o, h in reversed(list(zip(self.observers, handle, strict=True))):
            o.slice_finished(h, workflow, outcome, seconds)

    def lease_lost(self, workflow: str) -> None:
        for o in self.observers:
            o.lease_lost(workflow)


def add_observer(current: Observer | None, new: Observer) -> Observer:
    """``new`` alone, or with ``current`` behind a :class:`FanOut`."""
    if current is None:
        return new
    if isinstance(current, FanOut):
        return FanOut(*current.observers, new)
    return FanOut(current, new)
