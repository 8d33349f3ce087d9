"""The run log: one line per run an operator cares about, at ``info``.

:class:`RunLog` is an engine observer and an actor (``App(actors=[RunLog])``; ``stemd run``
always has it). For each run this process executes it logs, on the ``stemd.runs`` logger:

- ``run started`` (info): the run's first slice begins (``status="running"``);
- ``run completed`` (info): it completed, with ``duration``, seconds since it was created;
- ``run cancelled`` (info): this process cancelled it (API, parent, ``max_*_duration``),
  with ``duration`` and ``reason``;
- ``step failed; retrying`` (warning): a step attempt raised and the step will be tried
  again, with ``step``, ``attempt`` (the attempt that failed) and ``error``.

A failed run is logged by the engine itself (``run failed``, warning, with ``status``,
``duration``, ``step`` and ``error``), also where no RunLog is installed. At ``debug``,
the other slices get a line too (``slice ended``: suspended, released, abandoned).

Every line carries ``run_id``, ``workflow`` and ``status``. Durations are wall-clock
seconds from the run's creation, waits included; a cancelled run's is read from the
store by this actor, the others come with the slice at no cost.
"""

from __future__ import annotations

import contextvars
from collections import deque
from typing import TYPE_CHECKING

import anyio
import structlog

from stemd._engine.observer import Observer, SliceFinished, SliceStarted, StepFinished
from stemd._model import RunStatus

if TYPE_CHECKING:
    from datetime import datetime

    from anyio.abc import TaskStatus

    from stemd._app import App
    from stemd._engine.events import RunEvent

__all__ = ["RunLog"]

log = structlog.get_logger("stemd.runs")

# Cancellations waiting for their record to be read (more are logged without duration).
_BACKLOG = 1000


class _Slice:
    """What the run log knows of the slice running in this task."""

    __slots__ = ("created_at", "failed", "run_id", "token")

    def __init__(self, run_id: str, created_at: datetime | None) -> None:
        self.run_id = run_id
        self.created_at = created_at
        self.failed: tuple[str, int, BaseException] | None = None
        self.token: contextvars.Token[_Slice | None] | None = None


_current: contextvars.ContextVar[_Slice | None] = contextvars.ContextVar(
    "stemd_runlog_slice", default=None
)


def _seconds(start: datetime | None, end: datetime) -> float | None:
    if start is None:
        return None
    return round(max(0.0, (end - start).total_seconds()), 3)


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RunLog(Observer):
    """Logs the start, end and step retries of the runs of ``app`` (an open App).

    Install it as an actor factory, ``App(actors=[RunLog])``: it attaches itself to the
    engine when the App opens, and its actor reads the records of cancelled runs.
    """

    name = "runlog"

    def __init__(self, app: App) -> None:
        engine = app.engine
        self._clock = engine.clock
        self._store = engine.store
        self._cancelled_runs: deque[tuple[str, str, str]] = deque()
        self._more = anyio.Event()
        engine.observers.subscribe(self)
        engine.events.listen(self._on_event)

    # -- the actor: durations of cancelled runs --------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            while self._cancelled_runs:
                run_id, workflow, reason = self._cancelled_runs.popleft()
                duration: float | None = None
                try:
                    rec = await self._store.get_run(run_id)
                except Exception:  # the store is out: still say it was cancelled
                    rec = None
                if rec is not None:
                    duration = _seconds(rec.created_at, rec.finished_at or self._clock.now())
                self._cancelled(run_id, workflow, reason, duration)
            await self._more.wait()
            self._more = anyio.Event()

    def _on_event(self, event: RunEvent, raw_result: bytes | None) -> None:
        if event.status is not RunStatus.CANCELLED:
            return
        reason = event.cancel_reason or "cancelled"
        if len(self._cancelled_runs) >= _BACKLOG:  # too many at once: no duration
            self._cancelled(event.run_id, event.workflow, reason, None)
            return
        self._cancelled_runs.append((event.run_id, event.workflow, reason))
        self._more.set()

    @staticmethod
    def _cancelled(run_id: str, workflow: str, reason: str, duration: float | None) -> None:
        log.info(
            "run cancelled",
            run_id=run_id,
            workflow=workflow,
            status="cancelled",
            duration=duration,
            reason=reason,
        )

    # -- the engine observer ---------------------------------------------------------------

    def slice_started(self, event: SliceStarted) -> None:
        state = _Slice(event.run_id, event.created_at)
        if event.attempt == 1:  # the first claim of the run
            log.info("run started", run_id=event.run_id, workflow=event.workflow, status="running")
        state.token = _current.set(state)

    def step_finished(self, event: StepFinished) -> None:
        state = _current.get()
        if state is not None and event.result == "error" and event.error is not None:
            state.failed = (event.step, event.attempt, event.error)

    def slice_finished(self, event: SliceFinished) -> None:
        state = _current.get()
        if state is None or state.run_id != event.run_id:
            return
        if state.token is not None:
            _current.reset(state.token)  # the engine calls both in the task of the slice
        workflow, outcome = event.workflow, event.outcome
        if outcome == "complete":
            log.info(
                "run completed",
                run_id=state.run_id,
                workflow=workflow,
                status="completed",
                duration=_seconds(state.created_at, self._clock.now()),
            )
        elif outcome == "retry" and state.failed is not None:
            step, attempt, error = state.failed
            log.warning(
                "step failed; retrying",
                run_id=state.run_id,
                workflow=workflow,
                status="suspended",
                step=step,
                attempt=attempt,
                error=_describe(error),
            )
        elif outcome != "fail":  # a failure is logged by the engine
            log.debug(
                "slice ended",
                run_id=state.run_id,
                workflow=workflow,
                outcome=outcome,
                seconds=round(event.duration, 3),
            )
