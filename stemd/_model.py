"""The public data model: statuses, policies, run state and results."""

from __future__ import annotations

import enum
import math
import random
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import msgspec

from stemd._errors import StemError
from stemd._identifiers import validate_run_id

__all__ = [
    "LEGACY_UNKNOWN_WORKFLOW_STEP",
    "MAX_DURATION",
    "UNKNOWN_WORKFLOW_CODE",
    "WORKFLOW_CHANGED_CODE",
    "CancellationPolicy",
    "CheckpointInfo",
    "ErrorInfo",
    "Retry",
    "RunPage",
    "RunState",
    "RunStatus",
    "WorkflowResult",
    "parse_status",
    "seconds",
    "validate_run_id",
]

T = TypeVar("T")

# The longest duration accepted (100 years): deadlines are computed as instants, and an
# instant past the year 9999 cannot be represented (a run would fail at every commit).
MAX_DURATION = 100 * 365.25 * 86400


def seconds(value: float | timedelta | None, name: str) -> float | None:
    """Normalise a duration given as seconds or a ``timedelta`` to float seconds."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be seconds or a timedelta, not {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{name} must be a number of seconds, not NaN")
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    if not math.isfinite(value) or value > MAX_DURATION:
        raise ValueError(f"{name} must be at most {MAX_DURATION:.0f} seconds (100 years)")
    return float(value)


class RunStatus(enum.StrEnum):
    """The lifecycle state of a run."""

    PENDING = "pending"
    RUNNING = "running"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the run has ended (completed, failed or cancelled)."""
        return self in _TERMINAL


_TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


def parse_status(value: RunStatus | str | None) -> RunStatus | None:
    """``value`` as a :class:`RunStatus` (a name in any case: ``"Completed"``), ``None`` as is.

    Raises:
        StemError: not a status, naming the valid ones.
    """
    if value is None or isinstance(value, RunStatus):
        return value
    try:
        return RunStatus(str(value).lower())
    except ValueError:
        choices = ", ".join(s.value for s in RunStatus)
        raise StemError(f"unknown status {value!r} (one of {choices})") from None


class CancellationPolicy(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Limits after which the timer cancels a run.

    Args:
        max_run_duration: seconds (or a timedelta) a run may live before it is cancelled
            with reason ``"max_run_duration"``.
        max_suspend_duration: seconds (or a timedelta) a run may stay suspended before it
            is cancelled with reason ``"max_suspend_duration"``.
    """

    max_run_duration: float | None = None
    max_suspend_duration: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_run_duration", "max_suspend_duration"):
            msgspec.structs.force_setattr(self, name, seconds(getattr(self, name), name))


class Retry(msgspec.Struct, frozen=True, kw_only=True):
    """How a failing step is retried.

    Args:
        max_attempts: attempts in all, the first included; 1 means no retry.
        backoff: seconds before the first retry; doubles each attempt.
        max_backoff: the longest wait between two attempts.
        jitter: spread each wait over [50 %, 100 %] of its value.
    """

    max_attempts: int = 1
    backoff: float = 1.0
    max_backoff: float = 60.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        seconds(self.backoff, "backoff")
        seconds(self.max_backoff, "max_backoff")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        # The exponent is capped: 2**1024 does not fit in a float.
        base: float = min(self.max_backoff, self.backoff * (2 ** min(64, max(0, attempt - 1))))
        if self.jitter:
            base *= random.uniform(0.5, 1.0)
        return base


# ErrorInfo.code of a run given back, to be tried again later, by a process that does not
# know its workflow (``attempts``: how many times it was given back so far).
UNKNOWN_WORKFLOW_CODE = "unknown_workflow"
# The code of the error of a run stopped because its code no longer makes the calls it
# recorded (:class:`~stemd.WorkflowChanged`); ``attempts``: how many times it was tried.
WORKFLOW_CHANGED_CODE = "workflow_changed"
# How earlier builds recorded such a give-back: as the retries of a pseudo-step of this
# name (in ``RunRecord.attempt_step``, hence ``RunState.retried_step``). Runs they stored
# and RunStates their daemons send may still carry it; nothing writes it any more.
LEGACY_UNKNOWN_WORKFLOW_STEP = "@workflow"


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The recorded cause of a failed run, or of a wait to try again.

    ``step`` is the step that raised it (``None``: the script's body, or the run as a
    whole); ``attempts`` how many attempts had been made; ``code`` names a condition stemd
    itself recorded (``None`` for what user code raised): ``"unknown_workflow"``
    (:data:`UNKNOWN_WORKFLOW_CODE`).
    """

    type: str
    message: str
    step: str | None = None
    attempts: int | None = None
    code: str | None = None


class CheckpointInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One entry of a run's timeline: a checkpoint, when it was recorded, and how long the
    run took to get there from the entry before it.

    ``kind`` is ``"step"`` (a step's value was recorded; the value is in
    ``RunState.checkpoints``) or a wait: ``"sleep"`` (a sleep began; ``detail``: its wake
    time), ``"event"`` (an awaited event arrived, or its wait timed out; ``detail``:
    ``"received"`` or ``"timed out"``), ``"child_start"`` (a child run was started;
    ``detail``: its run id), ``"child_join"`` (a child's end was taken; ``detail``: its
    status, and its error or cancel reason); ``"failed"`` (a step failed for good;
    ``detail``: its error), ``"undo"`` (a flow step's compensation ran), ``"patch"`` (a
    ``patched()`` that said ``True``). Later versions may add kinds.

    Attributes:
        name: the checkpoint's name (``"draft"``, ``"poll#2"``, ``"review@event#0"``).
        kind: what was recorded (above).
        step: the step it belongs to (``""`` for a script's body).
        at: when it was recorded; ``None`` for a checkpoint written before stemd
            recorded checkpoint times.
        duration: seconds from the previous entry (the first: from the run's creation)
            to this one, waits and retries included; ``None`` when either time is unknown.
        detail: a few words on a wait (above); ``None`` for a step.
    """

    name: str
    kind: str
    step: str
    at: datetime | None = None
    duration: float | None = None
    detail: str | None = None


class RunState(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one run as stored.

    Values (``params``, ``result``, ``checkpoints``) are the stored values decoded to plain
    Python (dicts, lists, strings...); pass ``type=`` where the API offers it for typed values.
    """

    run_id: str
    workflow: str
    status: RunStatus
    params: Any = None
    result: Any = None
    error: ErrorInfo | None = None
    checkpoints: dict[str, Any] = msgspec.field(default_factory=dict)
    wait_topic: str | None = None
    resume_at: datetime | None = None
    parent_run_id: str | None = None
    policy: CancellationPolicy | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    cancel_reason: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    attempts: int = 0
    queue: str = "workflow"
    wait_child: str | None = None
    suspended_at: datetime | None = None
    finished_at: datetime | None = None
    ttl: float | None = None
    # What the run did, in order, with times: every checkpoint, waits included.
    timeline: list[CheckpointInfo] = msgspec.field(default_factory=list)
    # Retries: the step whose attempt failed most recently, and its failed attempts so far
    # (kept once the step succeeds: a step recorded after failures was retried).
    retried_step: str | None = None
    step_failures: int = 0
    # A wait on events: every topic of a wait on several (``wait_for_any``; ``wait_topic``
    # is the first), and what the waiting code said about its wait (``data=``).
    wait_topics: list[str] | None = None
    wait_data: Any = None
    version: str | int | None = None
    # Paused by an operator (``App.pause_runs``): it keeps its status and does not advance
    # until resumed.
    paused: bool = False


class RunPage(msgspec.Struct, frozen=True, kw_only=True):
    """One page of a listing (``App.page_runs``, ``App.page_waiting``) and the cursor of
    the next (``None`` on the last page): pass it as ``after=`` to get that page."""

    runs: list[RunState]
    next: str | None = None


class WorkflowResult(msgspec.Struct, Generic[T], frozen=True, kw_only=True):
    """What ``wait_for_completion`` returns."""

    run_id: str
    status: RunStatus
    value: T | None = None
    error: ErrorInfo | None = None
    state: RunState | None = None
    timed_out: bool = False

    @property
    def is_completed(self) -> bool:
        """Whether the run completed."""
        return self.status is RunStatus.COMPLETED

    @property
    def is_failed(self) -> bool:
        """Whether the run failed."""
        return self.status is RunStatus.FAILED

    @property
    def is_cancelled(self) -> bool:
        """Whether the run was cancelled."""
        return self.status is RunStatus.CANCELLED
