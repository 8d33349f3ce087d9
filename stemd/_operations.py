"""What the surfaces of an App may do with runs: the verbs of the NATS API and of durable
submission, as one protocol.

The actors that serve an App to the outside (the API responder, the ingress, the NATS
surface that makes them) take an :class:`Operations` (and the publisher of run events a
:class:`RunEventSource`), never the App or its engine: :class:`stemd.App` implements
:class:`Operations`, and a test can hand them anything that does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from stemd._engine.events import RunEvent

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime, timedelta

    from stemd._engine.groups import GroupOp
    from stemd._model import CancellationPolicy, RunPage, RunState, RunStatus
    from stemd._schedules import ScheduleInfo
    from stemd._store.base import WorkflowInfo

__all__ = ["EventListener", "Operations", "RunEventSource"]

#: Called with every status change of a run and, for a completed run, its encoded result.
EventListener = Callable[[RunEvent, "bytes | None"], None]


class Operations(Protocol):
    """The operations on runs that a surface (NATS API, ingress) offers.

    Every method validates its arguments and raises a :class:`~stemd._errors.StemError`
    (``UnknownWorkflow``, ``InvalidRunId``, ``RunNotFound``, ``StepNotFound``...) before
    anything is written.
    """

    async def start_run(
        self,
        workflow: str,
        params: Any = None,
        *,
        run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | None = None,
        trace: str | None = None,
        parent_run_id: str | None = None,
        dedup_key: str | None = None,
        priority: int = 0,
    ) -> tuple[str, bool]:
        """Start a run; return its id and whether it was created (``False``: a run with
        that id existed, or a live run started with ``dedup_key`` within the workflow's
        dedup window, whose id is returned; nothing was started). ``trace``: the
        starter's W3C ``traceparent``, recorded with the run; ``parent_run_id``: the run
        it is a child of (``RunNotFound`` if there is none); ``priority``: its rank among
        runs waiting for a slot of a concurrency limit (higher first)."""
        ...

    async def get_run(self, run_id: str) -> RunState | None:
        """The state of ``run_id``, or ``None``."""
        ...

    async def list_runs(
        self,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 100,
        *,
        after: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> list[RunState]:
        """Runs, newest first, from the cursor ``after`` on."""
        ...

    async def page_runs(
        self,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 100,
        *,
        after: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> RunPage:
        """A page of runs, newest first, and the cursor of the next (``None``: the last);
        ``created_after``/``created_before``: only runs created within that window."""
        ...

    async def emit(
        self,
        topic: str,
        payload: Any = None,
        *,
        retain: bool | float | timedelta | None = None,
    ) -> int:
        """Resume every run waiting on ``topic`` and keep the event as ``retain`` says;
        return how many runs it resumed."""
        ...

    async def send(
        self, run_id: str, topic: str, payload: Any = None, key: str | None = None
    ) -> bool:
        """Send a message to one run's next wait on ``topic``; ``False`` if a message
        with ``key`` was sent to it before (``RunNotFound``, ``RunEnded`` otherwise)."""
        ...

    async def runs_waiting_on(
        self, topic: str, limit: int | None = None, *, after: str | None = None
    ) -> list[RunState]:
        """Runs suspended waiting for an event or message on ``topic``, oldest first."""
        ...

    async def page_waiting(
        self, topic: str, limit: int = 1000, *, after: str | None = None
    ) -> RunPage:
        """A page of the runs waiting on ``topic`` and the cursor of the next."""
        ...

    async def cancel_run(self, run_id: str, reason: str = "cancelled") -> bool:
        """Cancel a run; ``False`` if it is unknown or has ended."""
        ...

    async def rewind_run(self, run_id: str, step: str) -> bool:
        """Re-run ``run_id`` from ``step`` on; ``False`` if the run is unknown."""
        ...

    async def pause_runs(
        self,
        *,
        run_ids: Iterable[str] | None = None,
        topic: str | None = None,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        dry_run: bool = False,
        new_runs: bool = False,
    ) -> int:
        """Pause every run the filters select (see ``App.pause_runs``); how many."""
        ...

    async def resume_runs(
        self,
        *,
        run_ids: Iterable[str] | None = None,
        topic: str | None = None,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        dry_run: bool = False,
        new_runs: bool = False,
    ) -> int:
        """Resume every paused run the filters select; how many."""
        ...

    async def cancel_runs(
        self,
        *,
        reason: str = "cancelled",
        run_ids: Iterable[str] | None = None,
        topic: str | None = None,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        dry_run: bool = False,
    ) -> int:
        """Cancel every run the filters select that has not ended; how many."""
        ...

    async def preview_runs(
        self,
        op: GroupOp,
        *,
        limit: int = 1000,
        run_ids: Iterable[str] | None = None,
        topic: str | None = None,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> tuple[int, list[str]]:
        """How many runs ``op`` would change, and the ids of the first ``limit``."""
        ...

    async def paused_workflows(self) -> list[str]:
        """The workflows whose new runs start paused."""
        ...

    async def registered_workflows(self) -> list[WorkflowInfo]:
        """The workflows served here or recorded in the store, by name."""
        ...

    async def fork_run(self, run_id: str, step: str) -> str:
        """Start a new run from ``run_id``'s checkpoints before ``step``; its id."""
        ...

    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule recorded in the store, with its state, by name."""
        ...

    async def pause_schedule(self, name: str) -> ScheduleInfo:
        """Pause schedule ``name`` (``ScheduleNotFound`` if there is none)."""
        ...

    async def resume_schedule(self, name: str) -> ScheduleInfo:
        """Resume schedule ``name`` from now on."""
        ...

    async def trigger_schedule(self, name: str, run_id: str | None = None) -> str:
        """Start a run of schedule ``name`` now; its id."""
        ...


class RunEventSource(Protocol):
    """Where the status changes of runs can be listened to (the engine's
    :class:`~stemd._engine.events.RunEvents`)."""

    def listen(self, fn: EventListener) -> Callable[[], None]:
        """Call ``fn`` on every status change; return a function that stops it."""
        ...
