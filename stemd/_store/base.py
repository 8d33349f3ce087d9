"""The Store protocol and the records it persists.

A store keeps runs (one :class:`RunRecord` each) and their checkpoints (ordered
``(name, bytes)`` pairs). Values are opaque bytes, encoded by the engine's codec.
Every write by a worker is conditional on the fencing token it got from :meth:`Store.claim`;
a write with a stale token raises :class:`~stemd._errors.LeaseLost` and changes nothing.
Time is always passed in (``now``): stores never read a clock of their own."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias, runtime_checkable

import msgspec

from stemd._model import CancellationPolicy, ErrorInfo, RunStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    TimeoutValue: TypeAlias = bytes | Callable[["RunRecord"], bytes]

__all__ = [
    "Checkpoint",
    "Claim",
    "CommitResult",
    "Complete",
    "Delivery",
    "Event",
    "ExternalChanges",
    "Fail",
    "FireResult",
    "Outcome",
    "Page",
    "Release",
    "RetryLater",
    "RunRecord",
    "SendResult",
    "Store",
    "Suspend",
    "WorkflowInfo",
    "base_step_name",
    "compute_timer_at",
    "cursor_of",
    "topics_of",
]


class RunRecord(msgspec.Struct, kw_only=True):
    """The durable state of one run (without its checkpoints)."""

    run_id: str
    workflow: str
    status: RunStatus
    params: bytes
    created_at: datetime
    updated_at: datetime
    queue: str = "workflow"
    result: bytes | None = None
    error: ErrorInfo | None = None
    parent_run_id: str | None = None
    policy: CancellationPolicy | None = None
    ttl: float | None = None
    # Suspension: what the run waits for, and the checkpoint its wait result goes to.
    wait_topic: str | None = None
    wait_key: str | None = None
    wait_child: str | None = None
    resume_at: datetime | None = None
    suspended_at: datetime | None = None
    # The wait that most recently resumed the run (its result is in checkpoint ``resume_key``).
    resume_key: str | None = None
    # The next instant the timer must look at this run (wake, deadline, retention).
    timer_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_reason: str | None = None
    # Ownership: a lease and a fencing token bumped by every claim and external transition.
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    token: int = 0
    attempts: int = 0
    # Retry bookkeeping: failed attempts so far of the step named ``attempt_step``.
    attempt_step: str | None = None
    step_failures: int = 0
    # W3C trace context (``traceparent``) of whoever started the run, for tracing.
    trace: str | None = None
    # A wait on several topics (``wait_for_any``): all of them, ``wait_topic`` the first.
    wait_topics: tuple[str, ...] | None = None
    # What the code that waits said about its wait (codec bytes), shown to inspectors.
    wait_data: bytes | None = None
    # Events: the position in the store's event order when the run was created (it takes
    # the topic events after it), and per topic the position of the last event it took.
    event_floor: int = 0
    cursors: dict[str, int] = msgspec.field(default_factory=dict)
    # The version of the workflow's code the run started with (``None``: it has none).
    version: str | int | None = None
    # Paused by an operator: not claimed, its timers held, its events kept in its mailbox.
    paused: bool = False
    priority: int = 0  # its rank among runs waiting for a slot (higher first)


class Checkpoint(msgspec.Struct, frozen=True):
    """A named, stored value of a run.

    ``at`` is when the store recorded it: the ``now`` of the write that stored it (a
    checkpoint saved, committed with an outcome, an event delivered, a wait timed out).
    Stores set it on what they return and ignore it on what they are given; it is ``None``
    for a checkpoint stored by a stemd that did not record times.
    """

    name: str
    value: bytes
    at: datetime | None = None


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """A successful claim: the run as claimed and everything recorded for it."""

    token: int
    record: RunRecord
    checkpoints: list[Checkpoint]


class Complete(msgspec.Struct, frozen=True, kw_only=True):
    """The run finished with ``result``; ``checkpoints`` are written in the same commit."""

    result: bytes
    checkpoints: tuple[Checkpoint, ...] = ()
    kind: Literal["complete"] = "complete"


class Suspend(msgspec.Struct, frozen=True, kw_only=True):
    """The run waits: until ``resume_at``, for an event on ``wait_topic`` (or on any of
    ``wait_topics``, the first of which is ``wait_topic``), or for a child.

    A wait on events is satisfied at once, in the same commit, when a message for the run
    or a kept topic event it has not taken is already there (the run stays runnable).
    ``wait_data`` is what the waiting code said about its wait, shown to inspectors."""

    checkpoints: tuple[Checkpoint, ...] = ()
    resume_at: datetime | None = None
    wait_topic: str | None = None
    wait_key: str | None = None
    wait_child: str | None = None
    wait_topics: tuple[str, ...] | None = None
    wait_data: bytes | None = None
    kind: Literal["suspend"] = "suspend"


class RetryLater(msgspec.Struct, frozen=True, kw_only=True):
    """The run is tried again at ``resume_at``: a step failed (``step``, its ``failures``
    so far), or, with ``step`` ``None``, the run could not be executed (``error`` says why)."""

    step: str | None
    failures: int
    resume_at: datetime
    error: ErrorInfo
    kind: Literal["retry"] = "retry"


class Fail(msgspec.Struct, frozen=True, kw_only=True):
    """The run failed for good."""

    error: ErrorInfo
    kind: Literal["fail"] = "fail"


class Release(msgspec.Struct, frozen=True, kw_only=True):
    """Give the run back unchanged (shutdown): it is runnable again at once."""

    kind: Literal["release"] = "release"


Outcome = Complete | Suspend | RetryLater | Fail | Release


class WorkflowInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow that a daemon (an App with workers) serves, as recorded in its store.

    ``steps`` are a flow's declared step names in order (``None`` for a script: its code
    is its plan). ``version`` is the workflow's declared version, ``None`` when it has
    none. ``registered_at`` is the ``now`` of the last registration: stores set it on what
    they return and ignore it on what they are given.
    """

    name: str
    kind: Literal["flow", "script"]
    steps: tuple[str, ...] | None = None
    version: str | int | None = None
    registered_at: datetime | None = None


class CommitResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a commit, cancel or timer firing changed."""

    record: RunRecord
    # Runs made runnable as a consequence (parents waiting on this run).
    woken: tuple[str, ...] = ()


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """An event appended to a topic's log by :meth:`Store.append_event`.

    ``seq`` is its position in the store's event order (it grows with every event, kept or
    not, and is never reused). ``prev`` is the position of the topic's previous kept
    event when this one was appended (0: none), which lets a delivery skip looking up
    the log for the runs that have taken everything before. ``expires_at`` is when the
    store may forget it; ``None`` for an event that is not kept (delivered only to the runs
    waiting when it is emitted).
    """

    topic: str
    seq: int
    value: bytes
    at: datetime
    prev: int = 0
    expires_at: datetime | None = None


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """What one call of :meth:`Store.deliver_event` did: the runs it resumed, and where
    the next call goes on (``None``: every waiting run has been looked at)."""

    resumed: list[str]
    after: int | None = None


class SendResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`Store.send_message` did.

    ``outcome``: ``"accepted"`` (kept in the run's mailbox, or taken at once by its
    wait: then ``resumed``), ``"duplicate"`` (a message with that key was sent to the run
    before: nothing changed), ``"not_found"`` (no such run) or ``"ended"`` (the run has
    ended: nothing changed). ``record`` is the run after the send (``None`` if unknown).
    """

    outcome: Literal["accepted", "duplicate", "not_found", "ended"]
    resumed: bool = False
    record: RunRecord | None = None


class Page(msgspec.Struct, frozen=True, kw_only=True):
    """A page of runs and the position to go on from (``None``: the last page)."""

    records: list[RunRecord]
    next: int | None = None


class FireResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the timer did to a run whose timer came due."""

    action: Literal["none", "woken", "cancelled", "deleted", "rescheduled"]
    record: RunRecord | None = None
    woken: tuple[str, ...] = ()


def base_step_name(checkpoint_name: str) -> str:
    """The step a checkpoint belongs to: ``poll#2`` → ``poll``; ``review@event#0`` → ``review``."""
    return checkpoint_name.partition("@")[0].partition("#")[0]


def topics_of(rec: RunRecord) -> tuple[str, ...]:
    """The topics a run waits on (none unless it is suspended on events)."""
    if rec.wait_topics:
        return rec.wait_topics
    return (rec.wait_topic,) if rec.wait_topic is not None else ()


def cursor_of(rec: RunRecord, topic: str) -> int:
    """The position after which the run takes the events of ``topic``."""
    return rec.cursors.get(topic, rec.event_floor)


def _plus(at: datetime | None, secs: float | None) -> datetime | None:
    if at is None or secs is None:
        return None
    return at + timedelta(seconds=secs)


def compute_timer_at(rec: RunRecord) -> datetime | None:
    """The next instant the timer must examine ``rec``: the earliest of its wake time,
    its policy deadlines and its retention expiry."""
    if rec.status.is_terminal:
        return _plus(rec.finished_at, rec.ttl)
    if rec.paused:
        return None
    candidates: list[datetime] = []
    policy = rec.policy
    if policy is not None:
        deadline = _plus(rec.created_at, policy.max_run_duration)
        if deadline is not None:
            candidates.append(deadline)
    if rec.status is RunStatus.SUSPENDED:
        if rec.resume_at is not None:
            candidates.append(rec.resume_at)
        if policy is not None:
            deadline = _plus(rec.suspended_at, policy.max_suspend_duration)
            if deadline is not None:
                candidates.append(deadline)
    return min(candidates) if candidates else None


class Store(Protocol):
    """Durable state of runs. Every method is atomic.

    Implementations: :mod:`stemd._store.memory`, :mod:`stemd._store.sqlite`,
    :mod:`stemd._store.jetstream`. All pass the same contract suite.
    """

    async def open(self) -> None:
        """Connect, create or migrate the schema."""
        ...

    async def close(self) -> None:
        """Flush and release every resource."""
        ...

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        """Insert ``record`` unless its run id exists (paused if its workflow is: see
        :meth:`pause_workflow`); return the stored run and whether it was created."""
        ...

    async def get_run(self, run_id: str) -> RunRecord | None:
        """The run, or ``None``."""
        ...

    async def get_checkpoints(self, run_id: str) -> list[Checkpoint]:
        """The run's checkpoints in the order they were written."""
        ...

    async def claim(self, run_id: str, owner: str, now: datetime, lease: float) -> Claim | None:
        """Take the run for execution, or return ``None`` when it is not runnable.

        Runnable: PENDING or RUNNING, with no live lease, and no wake time in the future.
        A claim sets RUNNING, the lease, bumps the token and counts an attempt.
        """
        ...

    async def renew_lease(self, run_id: str, token: int, now: datetime, lease: float) -> None:
        """Extend the lease; raise LeaseLost if ``token`` is no longer the run's."""
        ...

    async def save_checkpoint(
        self, run_id: str, token: int, checkpoint: Checkpoint, now: datetime
    ) -> None:
        """Record a checkpoint (replacing one of the same name); raise LeaseLost if stale."""
        ...

    async def commit(
        self, run_id: str, token: int, outcome: Outcome, now: datetime
    ) -> CommitResult:
        """Apply the outcome of an execution slice; raise LeaseLost if ``token`` is stale.

        A terminal outcome also wakes the runs suspended on this run as a child. A suspend
        on a child that has already ended leaves the run runnable instead, and so does a
        suspend on events when a message of its mailbox or a kept event it has not taken
        is there for the wait (taken, as a delivery would).
        """
        ...

    async def append_event(
        self, topic: str, value: bytes, now: datetime, retain: float | None
    ) -> Event:
        """Append an event to ``topic``'s log, kept ``retain`` seconds (``None``: not kept,
        only given a position), and return it. Nobody is resumed yet: see
        :meth:`deliver_event`."""
        ...

    async def deliver_event(
        self, event: Event, now: datetime, *, after: int = 0, limit: int = 1000
    ) -> Delivery:
        """Resume the runs waiting on ``event.topic`` that have not taken ``event``.

        Each is one atomic transition of one run from its current wait: the run takes the
        oldest kept event of the topic it has not taken, up to ``event`` (``event`` itself
        when there is none before it), as the checkpoint of its wait, its cursor on the
        topic moves to that event, and it becomes runnable. A run whose cursor is at or
        past ``event`` is left alone, so no interleaving of deliveries, sweeps and re-waits
        gives one event twice to a run. Runs are looked at in a fixed order from
        position ``after`` on, at most ``limit`` per call (a store may look at more);
        :attr:`Delivery.after` says where the next call goes on."""
        ...

    async def emit_event(
        self, topic: str, value: bytes, now: datetime, retain: float | None, *, limit: int = 1000
    ) -> tuple[Event, Delivery]:
        """:meth:`append_event`, then the first :meth:`deliver_event` of it (``after`` 0),
        in one go where the store can (SQLite: one transaction)."""
        ...

    async def send_message(
        self, run_id: str, topic: str, value: bytes, now: datetime, key: str | None = None
    ) -> SendResult:
        """Put a message in the run's mailbox, atomically: taken at once by the run's wait
        when it waits on ``topic`` (then it becomes runnable), else kept until a wait on
        ``topic`` takes it (the oldest first). With ``key``, a second send of that key to
        the run changes nothing (``"duplicate"``, also once the run has ended: a retried
        send is not an error)."""
        ...

    async def prune_events(self, now: datetime) -> int:
        """Forget the topic events whose retention ended at or before ``now``; return how
        many (a store whose events expire by themselves returns 0)."""
        ...

    async def due_timers(self, until: datetime, limit: int) -> list[tuple[datetime, str]]:
        """Runs whose timer is at or before ``until``, earliest first."""
        ...

    async def fire_timer(self, run_id: str, now: datetime, timeout: TimeoutValue) -> FireResult:
        """Act on a due timer: delete an expired finished run, cancel a run past a policy
        deadline, or wake a run whose ``resume_at`` passed (an event wait gets ``timeout``,
        or what it makes of the waiting run, as its result). Not due: nothing."""
        ...

    async def cancel(self, run_id: str, reason: str, now: datetime) -> CommitResult | None:
        """Cancel a run that has not ended; ``None`` if it is unknown or already ended."""
        ...

    async def pause(self, run_id: str, now: datetime) -> RunRecord | None:
        """Pause a run not ended (``transitions.apply_pause``); ``None``: no change."""
        ...

    async def resume(self, run_id: str, now: datetime) -> RunRecord | None:
        """Resume a paused run: it takes what its wait was given meanwhile (its mailbox, a
        kept event, its child's end); ``None`` if it is unknown or not paused."""
        ...

    async def pause_workflow(self, workflow: str, paused: bool) -> bool:
        """Set whether new runs of ``workflow`` are created paused; whether it changed."""
        ...

    async def paused_workflows(self) -> list[str]:
        """The workflows whose new runs are created paused, by name."""
        ...

    async def rewind(self, run_id: str, step: str, now: datetime) -> RunRecord | None:
        """Delete the checkpoints of ``step`` and every later one and make the run
        runnable at once; ``None`` if the run is unknown."""
        ...

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Runs, newest first, filtered."""
        ...

    async def runs_waiting_on(self, topic: str, limit: int = 1000) -> list[RunRecord]:
        """Runs suspended on ``topic``, in creation order."""
        ...

    async def page_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> Page:
        """As :meth:`list_runs` (newest first), from position ``after`` on (exclusive;
        ``None``: the newest); :attr:`Page.next` is where the next page starts."""
        ...

    async def page_waiting(
        self, topic: str, *, limit: int = 1000, after: int | None = None
    ) -> Page:
        """As :meth:`runs_waiting_on` (creation order), from position ``after`` on
        (exclusive; ``None``: the first); :attr:`Page.next` is where the next page starts."""
        ...

    async def runnable(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(run id, queue) of runs that could be claimed now (the sweeper's query)."""
        ...

    async def register_workflows(self, workflows: Sequence[WorkflowInfo], now: datetime) -> None:
        """Record ``workflows`` as served, each registered at ``now``, replacing what was
        recorded under their names; other workflows stay recorded (never forgotten)."""
        ...

    async def registered_workflows(self) -> list[WorkflowInfo]:
        """Every workflow ever registered in this store, by name."""
        ...


@runtime_checkable
class ExternalChanges(Protocol):
    """A store shared with other processes that can tell cheaply when one of them wrote.

    The sweeper polls it (every ~100 ms) and sweeps when it moves, so that runs created or
    made runnable by another process (a CLI, another daemon) start promptly.
    """

    async def external_changes(self) -> int:
        """A counter that moves whenever another process has committed since the last
        call (it may also move spuriously; it never stays put after such a commit)."""
        ...
