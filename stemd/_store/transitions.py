"""Pure state transitions of a run, shared by every store.

A store supplies atomicity and indexes; these functions decide what each operation does
to a :class:`RunRecord`, so that every backend behaves identically.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

import msgspec

from stemd._model import RunStatus
from stemd._store.base import (
    Complete,
    Event,
    Fail,
    Outcome,
    Release,
    RetryLater,
    RunRecord,
    Suspend,
    base_step_name,
    compute_timer_at,
    cursor_of,
    topics_of,
)

if TYPE_CHECKING:
    from stemd._store.base import TimeoutValue

__all__ = [
    "apply_cancel",
    "apply_claim",
    "apply_delivery",
    "apply_event",
    "apply_fire",
    "apply_hold",
    "apply_outcome",
    "apply_pause",
    "apply_pause_stop",
    "apply_resume",
    "apply_rewind",
    "apply_wake_parent",
    "choose_event",
    "created_paused",
    "is_claimable",
    "is_runnable",
    "rewind_cut",
    "timeout_value_of",
    "waits_for_events",
    "waits_on",
]

_LIVE = (RunStatus.PENDING, RunStatus.RUNNING)

_CLEAR_WAIT: dict[str, object] = {
    "wait_topic": None,
    "wait_key": None,
    "wait_child": None,
    "resume_at": None,
    "suspended_at": None,
    "wait_topics": None,
    "wait_data": None,
}
_CLEAR_LEASE: dict[str, object] = {"lease_owner": None, "lease_expires_at": None}


def _with(rec: RunRecord, now: datetime, **changes: object) -> RunRecord:
    new = msgspec.structs.replace(rec, updated_at=now, **changes)
    if new.paused and new.status.is_terminal:
        new.paused = False  # an ended run is not paused
    new.timer_at = compute_timer_at(new)
    return new


def is_runnable(rec: RunRecord, now: datetime) -> bool:
    """Whether a worker could claim the run now."""
    if rec.status not in _LIVE or rec.paused:
        return False
    if rec.lease_expires_at is not None and rec.lease_expires_at > now:
        return False
    return rec.resume_at is None or rec.resume_at <= now


is_claimable = is_runnable


def apply_claim(rec: RunRecord, owner: str, now: datetime, lease: float) -> RunRecord:
    """RUNNING under ``owner``'s lease, with a new fencing token."""
    return _with(
        rec,
        now,
        status=RunStatus.RUNNING,
        lease_owner=owner,
        lease_expires_at=now + timedelta(seconds=lease),
        token=rec.token + 1,
        attempts=rec.attempts + 1,
    )


def apply_outcome(
    rec: RunRecord, outcome: Outcome, now: datetime, *, child_ended: bool = False
) -> RunRecord:
    """The run after an execution slice ended with ``outcome``."""
    if isinstance(outcome, Complete):
        return _with(
            rec,
            now,
            status=RunStatus.COMPLETED,
            result=outcome.result,
            error=None,
            finished_at=now,
            resume_key=None,
            **_CLEAR_WAIT,
            **_CLEAR_LEASE,
        )
    if isinstance(outcome, Fail):
        return _with(
            rec,
            now,
            status=RunStatus.FAILED,
            error=outcome.error,
            finished_at=now,
            resume_key=None,
            **_CLEAR_WAIT,
            **_CLEAR_LEASE,
        )
    if isinstance(outcome, RetryLater):
        return _with(
            rec,
            now,
            status=RunStatus.SUSPENDED,
            error=outcome.error,
            attempt_step=outcome.step,
            step_failures=outcome.failures,
            resume_key=None,
            **{**_CLEAR_WAIT, "resume_at": outcome.resume_at, "suspended_at": now},
            **_CLEAR_LEASE,
        )
    if isinstance(outcome, Suspend):
        if outcome.wait_child is not None and child_ended:
            # The child ended before we suspended on it: stay runnable.
            return _with(
                rec, now, status=RunStatus.PENDING, resume_key=None, **_CLEAR_WAIT, **_CLEAR_LEASE
            )
        return _with(
            rec,
            now,
            status=RunStatus.SUSPENDED,
            resume_key=None,
            wait_topic=outcome.wait_topic,
            wait_key=outcome.wait_key,
            wait_child=outcome.wait_child,
            wait_topics=outcome.wait_topics,
            wait_data=outcome.wait_data,
            resume_at=outcome.resume_at,
            suspended_at=now,
            **_CLEAR_LEASE,
        )
    assert isinstance(outcome, Release)
    return _with(rec, now, status=RunStatus.PENDING, **_CLEAR_LEASE)


def apply_event(rec: RunRecord, now: datetime) -> RunRecord:
    """A suspended run whose event arrived: runnable, its wait result recorded."""
    return _with(
        rec,
        now,
        status=RunStatus.PENDING,
        resume_key=rec.wait_key,
        token=rec.token + 1,
        **_CLEAR_WAIT,
        **_CLEAR_LEASE,
    )


apply_wake_parent = apply_event


def waits_on(rec: RunRecord, topic: str) -> bool:
    """Whether the run is suspended waiting for an event or message on ``topic``."""
    return rec.status is RunStatus.SUSPENDED and topic in topics_of(rec)


def waits_for_events(rec: RunRecord) -> bool:
    """Whether the run is suspended waiting for events or messages (on any topic)."""
    return rec.status is RunStatus.SUSPENDED and rec.wait_topic is not None


def choose_event(
    rec: RunRecord, event: Event, next_kept: tuple[int, bytes] | None
) -> tuple[int, bytes] | None:
    """What a delivery of ``event`` gives the waiting run ``rec``: (position, value), or
    ``None`` when the run has taken ``event`` (or a later one) already.

    ``next_kept`` is the topic's oldest kept event past the run's cursor (``None``: none).
    Events are taken in order: when one older than ``event`` is still there for the run
    (emitted concurrently, its own delivery not there yet), the run takes that one first;
    ``event`` is there for its next wait, or reaches it by its own delivery."""
    if cursor_of(rec, event.topic) >= event.seq:
        return None
    if next_kept is not None and next_kept[0] < event.seq:
        return next_kept
    return event.seq, event.value


def apply_delivery(rec: RunRecord, now: datetime, topic: str, seq: int | None) -> RunRecord:
    """A run waiting on ``topic`` takes an event (position ``seq``) or a message of its
    mailbox (``seq`` ``None``): runnable, its wait result recorded, its cursor moved."""
    cursors = rec.cursors
    if seq is not None:
        cursors = {**cursors, topic: seq}
    return _with(
        rec,
        now,
        status=RunStatus.PENDING,
        resume_key=rec.wait_key,
        token=rec.token + 1,
        cursors=cursors,
        **_CLEAR_WAIT,
        **_CLEAR_LEASE,
    )


def apply_cancel(rec: RunRecord, reason: str, now: datetime) -> RunRecord:
    """CANCELLED with ``reason``; any owner is fenced out."""
    return _with(
        rec,
        now,
        status=RunStatus.CANCELLED,
        cancel_reason=reason,
        finished_at=now,
        token=rec.token + 1,
        resume_key=None,
        **_CLEAR_WAIT,
        **_CLEAR_LEASE,
    )


def apply_pause(rec: RunRecord, now: datetime) -> RunRecord:
    """Paused: the run keeps its status and its wait, is not claimed, and its timers are
    held. A running run's owner is not fenced: it stops at its next checkpoint
    (:func:`apply_pause_stop`) or commit (whose outcome stays paused)."""
    return _with(rec, now, paused=True)


def apply_pause_stop(rec: RunRecord, now: datetime) -> RunRecord:
    """A paused run whose owner has just recorded a checkpoint: given back (pending,
    still paused), its owner fenced out, to go on from that checkpoint when resumed."""
    return _with(rec, now, status=RunStatus.PENDING, token=rec.token + 1, **_CLEAR_LEASE)


def apply_resume(rec: RunRecord, now: datetime) -> RunRecord:
    """No longer paused: its timers count again; a run that was ready to go (pending, or
    running under a lease that has expired) is runnable again, with a new token (its new
    enqueue is a new transition). A run still running under a live lease goes on."""
    live_lease = rec.lease_expires_at is not None and rec.lease_expires_at > now
    if rec.status is RunStatus.PENDING or (rec.status is RunStatus.RUNNING and not live_lease):
        return _with(
            rec, now, paused=False, status=RunStatus.PENDING, token=rec.token + 1, **_CLEAR_LEASE
        )
    return _with(rec, now, paused=False)


def created_paused(rec: RunRecord) -> RunRecord:
    """A new run of a paused workflow: created paused (its timers held)."""
    new = msgspec.structs.replace(rec, paused=True)
    new.timer_at = compute_timer_at(new)
    return new


def timeout_value_of(timeout: TimeoutValue, rec: RunRecord) -> bytes:
    """What the timed-out wait of ``rec`` (the run as it waited) records."""
    return timeout if isinstance(timeout, bytes) else timeout(rec)


def apply_hold(rec: RunRecord, now: datetime, topic: str, seq: int) -> RunRecord:
    """A paused run waiting on ``topic`` was delivered the event at position ``seq``: its
    cursor moves past it (the store keeps the event in the run's mailbox), and it stays
    suspended."""
    return _with(rec, now, cursors={**rec.cursors, topic: seq})


def apply_rewind(rec: RunRecord, now: datetime) -> RunRecord:
    """Runnable again at once, as if the deleted checkpoints had never been written."""
    return _with(
        rec,
        now,
        status=RunStatus.PENDING,
        result=None,
        error=None,
        finished_at=None,
        cancel_reason=None,
        token=rec.token + 1,
        resume_key=None,
        attempt_step=None,
        step_failures=0,
        **_CLEAR_WAIT,
        **_CLEAR_LEASE,
    )


FireAction = Literal["none", "woken", "cancelled", "deleted", "rescheduled"]


def apply_fire(rec: RunRecord, now: datetime) -> tuple[FireAction, RunRecord | None, str | None]:
    """Decide what a due timer does to ``rec``.

    Returns the action, the new record (``None`` for a deletion), and the cancel reason
    for a cancellation. An event wait that timed out is woken with its ``wait_key`` kept in
    ``resume_key`` so that the store can record the timeout as its result.
    """
    if rec.timer_at is None or rec.timer_at > now:
        return "none", rec, None
    if rec.status.is_terminal:
        return "deleted", None, None
    policy = rec.policy
    run_limit = policy.max_run_duration if policy is not None else None
    if run_limit is not None and rec.created_at + timedelta(seconds=run_limit) <= now:
        return "cancelled", apply_cancel(rec, "max_run_duration", now), "max_run_duration"
    if rec.status is RunStatus.SUSPENDED:
        suspend_deadline = _suspend_deadline(rec)
        resume_at = rec.resume_at
        wake = resume_at is not None and resume_at <= now
        if wake and (suspend_deadline is None or resume_at <= suspend_deadline):  # type: ignore[operator]
            return "woken", apply_event(rec, now), None
        if suspend_deadline is not None and suspend_deadline <= now:
            reason = "max_suspend_duration"
            return "cancelled", apply_cancel(rec, reason, now), reason
    return "rescheduled", _with(rec, now), None


def _suspend_deadline(rec: RunRecord) -> datetime | None:
    """When the run's ``max_suspend_duration`` cancels it, if it has one and is suspended."""
    policy = rec.policy
    if policy is None or policy.max_suspend_duration is None or rec.suspended_at is None:
        return None
    return rec.suspended_at + timedelta(seconds=policy.max_suspend_duration)


def rewind_cut(names_in_order: list[str], step: str) -> list[str]:
    """The checkpoints a rewind to ``step`` deletes: from its first one on."""
    for i, name in enumerate(names_in_order):
        if base_step_name(name) == step:
            return names_in_order[i:]
    return []
