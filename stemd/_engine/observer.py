"""Hooks through which the timer, metrics and tracing watch the engine.

The engine is given an :class:`Observers` at construction and tells it what it does;
observers subscribe to it (and unsubscribe) at any time. Each hook takes one frozen
struct, so a field added later breaks no observer. An observer subclasses
:class:`Observer` and overrides the hooks it needs; a hook nobody overrides costs the
engine nothing (not even its struct).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from stemd._model import RunStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "LostLease",
    "Observer",
    "OnTimer",
    "Observers",
    "RunChanged",
    "RunStarted",
    "SliceFinished",
    "SliceStarted",
    "StepFinished",
    "StepStarted",
]


class RunStarted(msgspec.Struct, frozen=True, kw_only=True):
    """A run was created."""

    run_id: str
    workflow: str


class RunChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A run's record changed (a claim, a commit, a wake-up, a cancel...): ``timer_at`` is
    the next instant the timer must look at it."""

    run_id: str
    workflow: str
    status: RunStatus
    timer_at: datetime | None = None


class SliceStarted(msgspec.Struct, frozen=True, kw_only=True):
    """An execution slice of a just claimed run begins (``attempt``: the claims so far;
    ``trace``: the starter's W3C ``traceparent``; ``created_at``: when the run was created)."""

    run_id: str
    workflow: str
    attempt: int
    queue: str
    trace: str | None = None
    created_at: datetime | None = None


class SliceFinished(msgspec.Struct, frozen=True, kw_only=True):
    """The slice ended: ``outcome`` is what was committed (complete, suspend, retry, fail,
    release) or ``abandoned`` (lease lost, cancelled: nothing committed)."""

    run_id: str
    workflow: str
    outcome: str
    duration: float


class StepStarted(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt of a step begins (``attempt`` is 1-based)."""

    run_id: str
    workflow: str
    step: str
    attempt: int


class StepFinished(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of a step ended: ``result`` is ``ok``, ``error`` (``error`` is what it
    raised) or ``suspended`` (it slept or waited; it runs again on resume)."""

    run_id: str
    workflow: str
    step: str
    attempt: int
    duration: float
    result: str
    error: BaseException | None = None


class LostLease(msgspec.Struct, frozen=True, kw_only=True):
    """A slice was abandoned because its lease was lost."""

    run_id: str
    workflow: str


class Observer:
    """Told what the engine does. Every hook is a no-op here: override those you need.

    Hooks must be cheap and must not raise. ``slice_started`` and ``slice_finished``
    bracket each execution slice in the task that runs it, and ``step_started`` and
    ``step_finished`` each step attempt inside it, so an observer may set context
    variables in one and reset them in the other.
    """

    def run_started(self, event: RunStarted) -> None:
        """A run was created."""

    def run_changed(self, event: RunChanged) -> None:
        """A run's record changed."""

    def slice_started(self, event: SliceStarted) -> None:
        """An execution slice begins."""

    def slice_finished(self, event: SliceFinished) -> None:
        """An execution slice ended."""

    def step_started(self, event: StepStarted) -> None:
        """A step attempt begins."""

    def step_finished(self, event: StepFinished) -> None:
        """A step attempt ended."""

    def lease_lost(self, event: LostLease) -> None:
        """A slice was abandoned because its lease was lost."""

    def trace_context(self) -> str | None:
        """The W3C ``traceparent`` to record with a run started now without one (tracing:
        the caller's active span), or ``None``."""
        return None


class OnTimer(Observer):
    """An observer calling ``fn(timer_at, run_id)`` for every change that leaves the run a
    timer (the timer actors)."""

    def __init__(self, fn: Callable[[datetime, str], None]) -> None:
        self.fn = fn

    def run_changed(self, event: RunChanged) -> None:
        if event.timer_at is not None:
            self.fn(event.timer_at, event.run_id)


_HOOKS = (
    "run_started",
    "run_changed",
    "slice_started",
    "slice_finished",
    "step_started",
    "step_finished",
    "lease_lost",
    "trace_context",
)


def _overrides(observer: Observer, hook: str) -> bool:
    return getattr(type(observer), hook) is not getattr(Observer, hook)


class Observers:
    """The observers of one engine, subscribed in order.

    For each hook, a tuple of the subscribers' methods that implement it (empty when none
    does, so the engine can skip building its struct). The ``*_finished`` hooks run in
    reverse order of subscription: context set up by later observers is undone first.
    """

    run_started: tuple[Callable[[RunStarted], None], ...]
    run_changed: tuple[Callable[[RunChanged], None], ...]
    slice_started: tuple[Callable[[SliceStarted], None], ...]
    slice_finished: tuple[Callable[[SliceFinished], None], ...]
    step_started: tuple[Callable[[StepStarted], None], ...]
    step_finished: tuple[Callable[[StepFinished], None], ...]
    lease_lost: tuple[Callable[[LostLease], None], ...]
    trace_contexts: tuple[Callable[[], str | None], ...]

    def __init__(self, *observers: Observer) -> None:
        self._observers: list[Observer] = list(observers)
        self._index()

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Tell ``observer`` too from now on; returns a function that unsubscribes it."""
        self._observers.append(observer)
        self._index()
        return lambda: self.unsubscribe(observer)

    def unsubscribe(self, observer: Observer) -> None:
        """Tell ``observer`` no more (nothing if it is not subscribed)."""
        if observer in self._observers:
            self._observers.remove(observer)
            self._index()

    def __iter__(self) -> Iterator[Observer]:
        return iter(list(self._observers))

    def _index(self) -> None:
        for hook in _HOOKS:
            methods = tuple(getattr(o, hook) for o in self._observers if _overrides(o, hook))
            if hook.endswith("_finished"):
                methods = methods[::-1]
            setattr(self, "trace_contexts" if hook == "trace_context" else hook, methods)

    def trace_context(self) -> str | None:
        """The first ``traceparent`` a subscriber gives, or ``None``."""
        for provide in self.trace_contexts:
            value = provide()
            if value is not None:
                return value
        return None
