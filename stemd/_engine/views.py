"""Views of stored runs: the public RunState of a record, run ids, and how a run given
back for want of its workflow reads (today's error code, or earlier builds' pseudo-step)."""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import msgspec
import structlog

from stemd._engine.timeline import build_timeline
from stemd._engine.versions import version_label
from stemd._model import (
    LEGACY_UNKNOWN_WORKFLOW_STEP,
    UNKNOWN_WORKFLOW_CODE,
    ErrorInfo,
    Retry,
    RunState,
)
from stemd._store.base import RetryLater

if TYPE_CHECKING:
    from collections.abc import Iterable

    from stemd._codec import Codec
    from stemd._store.base import Checkpoint, RunRecord

__all__ = [
    "UNKNOWN_WORKFLOW_RETRY",
    "given_back",
    "new_run_id",
    "to_run_state",
    "unknown_workflow",
]
log = structlog.get_logger("stemd.engine")

# A run whose workflow this process does not know is given back, to be tried again after
# 1 s, 2 s, 4 s... at most a minute apart, until a process that knows it takes it (a rolling
# deploy adding a workflow; a run started by a client of another code base). Its error says
# so (code UNKNOWN_WORKFLOW_CODE) and counts the give-backs (``attempts``).
UNKNOWN_WORKFLOW_RETRY = Retry(backoff=1.0, max_backoff=60.0, jitter=False)


def given_back(rec: RunRecord) -> int:
    """How many times ``rec`` was given back in a row for want of its workflow (0: it was
    not, or a process that knows the workflow has failed a step of it since)."""
    if rec.attempt_step == LEGACY_UNKNOWN_WORKFLOW_STEP:  # recorded by earlier builds
        return rec.step_failures
    error = rec.error
    if error is not None and error.code == UNKNOWN_WORKFLOW_CODE:
        return error.attempts or 0
    return 0


def unknown_workflow(rec: RunRecord, owner: str, now: datetime) -> RetryLater:
    """Give back a run whose workflow (or the version it started on) is not registered
    here, to be tried again later (by any process): failing it would lose it for good. No
    step failed: the steps' retry bookkeeping starts afresh."""
    failures = given_back(rec) + 1
    delay = UNKNOWN_WORKFLOW_RETRY.delay(failures)
    log.warning(
        "workflow not registered here; the run waits for a process that knows it",
        run_id=rec.run_id,
        workflow=rec.workflow,
        version=rec.version,
        tries=failures,
        retry_in=delay,
    )
    return RetryLater(
        step=None,
        failures=0,
        resume_at=now + timedelta(seconds=delay),
        error=ErrorInfo(
            type="UnknownWorkflow",
            message=f"workflow {version_label(rec.workflow, rec.version)} is not registered"
            f" in the process that took the run ({owner}); tried {failures} time"
            f"{'s' if failures != 1 else ''}, again until one that knows it takes it",
            attempts=failures,
            code=UNKNOWN_WORKFLOW_CODE,
        ),
    )


def _legacy_give_back(rec: RunRecord) -> tuple[ErrorInfo | None, str | None, int]:
    """``error``, ``retried_step`` and ``step_failures`` of a run's public state, a give-back
    recorded by earlier builds (a pseudo-step's retries) read as today's (an error code)."""
    if rec.attempt_step != LEGACY_UNKNOWN_WORKFLOW_STEP:
        return rec.error, rec.attempt_step, rec.step_failures
    error = rec.error
    if error is not None and error.type == "UnknownWorkflow" and error.step is None:
        error = msgspec.structs.replace(
            error, code=UNKNOWN_WORKFLOW_CODE, attempts=rec.step_failures
        )
    return error, None, 0


def new_run_id() -> str:
    """A fresh run id: 12 hex digits of milliseconds since the epoch, then 12 random ones.

    Ids that grow with time keep the stores' run-id indexes append-mostly: random ones
    scatter every insert over the whole index (docs/explanation/performance.md).
    """
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def to_run_state(rec: RunRecord, checkpoints: Iterable[Checkpoint], codec: Codec) -> RunState:
    """The public view of a stored run: values decoded, internal checkpoints left out of
    ``checkpoints`` (the timeline lists every one, with its time)."""
    checkpoints = list(checkpoints)
    error, retried_step, step_failures = _legacy_give_back(rec)
    return RunState(
        run_id=rec.run_id,
        workflow=rec.workflow,
        status=rec.status,
        params=codec.decode(rec.params),
        result=codec.decode(rec.result) if rec.result is not None else None,
        error=error,
        checkpoints={c.name: codec.decode(c.value) for c in checkpoints if "@" not in c.name},
        wait_topic=rec.wait_topic,
        resume_at=rec.resume_at,
        parent_run_id=rec.parent_run_id,
        policy=rec.policy,
        created_at=rec.created_at,
        updated_at=rec.updated_at,
        cancel_reason=rec.cancel_reason,
        lease_owner=rec.lease_owner,
        lease_expires_at=rec.lease_expires_at,
        attempts=rec.attempts,
        queue=rec.queue,
        wait_child=rec.wait_child,
        suspended_at=rec.suspended_at,
        finished_at=rec.finished_at,
        ttl=rec.ttl,
        timeline=build_timeline(rec.created_at, checkpoints, codec),
        retried_step=retried_step,
        step_failures=step_failures,
        wait_topics=list(rec.wait_topics) if rec.wait_topics else None,
        wait_data=codec.decode(rec.wait_data) if rec.wait_data is not None else None,
        version=rec.version,
        paused=rec.paused,
    )
