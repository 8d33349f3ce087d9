"""How the CLI shows things: JSON for machines, tables and timelines for people."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import msgspec

from stemd._model import (
    LEGACY_UNKNOWN_WORKFLOW_STEP,
    UNKNOWN_WORKFLOW_CODE,
    CheckpointInfo,
    ErrorInfo,
    RunState,
    RunStatus,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stemd._wire import WorkflowType

__all__ = ["duration", "print_json", "run_detail", "runs_table", "short_json", "types_table"]


def print_json(value: Any, out: TextIO | None = None) -> None:
    """One JSON document on a line (statuses lower case, times RFC 3339)."""
    stream = out or sys.stdout
    stream.write(msgspec.json.encode(value).decode() + "\n")


def short_json(value: Any, width: int = 60) -> str:
    """``value`` as compact JSON, cut to ``width`` characters."""
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ms_time(value: datetime | None) -> str:
    """A time to the millisecond, for the timeline."""
    if value is None:
        return "-"
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%d %H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def duration(seconds: float | None) -> str:
    """``seconds`` in a few characters: ``0.104s``, ``12m05s``, ``3h20m``, ``2d04h``."""
    if seconds is None:
        return "-"
    sign = "-" if seconds < 0 else ""
    secs = abs(seconds)
    if secs < 60:
        return f"{sign}{secs:.3f}s"
    whole = round(secs)
    if whole < 3600:
        return f"{sign}{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{sign}{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{sign}{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _attempts(n: int) -> str:
    return f"{n} failed attempt{'s' if n != 1 else ''}"


def _given_back(run: RunState) -> bool:
    """Whether the run was last given back by a process that lacked its workflow (as
    recorded today, or by the daemons of earlier builds)."""
    error = run.error
    return (
        error is not None and error.code == UNKNOWN_WORKFLOW_CODE
    ) or run.retried_step == LEGACY_UNKNOWN_WORKFLOW_STEP


def _unregistered(run: RunState) -> bool:
    """Whether the run waits for a process that knows its workflow: given back, and
    nothing of it has run since (the give-back's error outlives it, as a retried step's
    does)."""
    return run.status is RunStatus.SUSPENDED and _given_back(run) and not run.timeline


_HELD_CODES = ("waiting_for_slot", "rate_limited")


def _held_back(run: RunState) -> str | None:
    """What holds back a run that waits to try again without a failed step: a process
    that knows its workflow, a slot of a concurrency limit or a rate limit's window
    (``stemd.Limits``)."""
    if _unregistered(run):
        return f"workflow not registered where taken; next try at {_time(run.resume_at)}"
    error = run.error
    if run.status is RunStatus.SUSPENDED and error and error.code in _HELD_CODES:
        return f"{error.message}; next try at {_time(run.resume_at)}"
    return None


def _retrying(run: RunState) -> bool:
    """Whether the run waits to retry a failed step."""
    return (
        run.status is RunStatus.SUSPENDED
        and run.error is not None
        and run.retried_step not in (None, LEGACY_UNKNOWN_WORKFLOW_STEP)
        and run.retried_step not in run.checkpoints
        and run.wait_topic is None
        and run.wait_child is None
    )


def _waiting_for_event(run: RunState) -> str:
    """The detail of a run waiting on events: the topics, until when, what about."""
    until = f" (until {_time(run.resume_at)})" if run.resume_at else ""
    topics = " or ".join(run.wait_topics) if run.wait_topics else run.wait_topic
    about = f" {short_json(run.wait_data, 40)}" if run.wait_data is not None else ""
    return f"waiting for event {topics}{until}{about}"


def _error_text(run: RunState) -> str:
    assert run.error is not None
    where = f" in {run.error.step}" if run.error.step else ""
    return f"{run.error.type}{where}: {run.error.message}"


def _detail(run: RunState) -> str:
    """What a person wants to know next about the run, in a few words."""
    if run.status is RunStatus.FAILED and run.error is not None:
        return _error_text(run)
    if run.cancel_reason:
        return f"cancelled: {run.cancel_reason}"
    if run.wait_topic:
        return _waiting_for_event(run)
    if run.wait_child:
        return f"waiting for child {run.wait_child}"
    if (held := _held_back(run)) is not None:
        return held
    if _retrying(run):
        return f"retrying {run.retried_step} at {_time(run.resume_at)}"
    if run.resume_at and run.status in (RunStatus.SUSPENDED, RunStatus.PENDING):
        return f"resumes at {_time(run.resume_at)}"
    if run.error is not None:
        return _error_text(run)
    if run.status is RunStatus.COMPLETED:
        return f"result {short_json(run.result, 40)}"
    return ""


def runs_table(runs: Sequence[RunState]) -> str:
    """A table of runs, one a line, columns aligned."""
    if not runs:
        return "no runs\n"
    rows = [("RUN ID", "WORKFLOW", "STATUS", "UPDATED", "DETAIL")]
    for r in runs:
        status = r.status.value + (" paused" if r.paused else "")
        rows.append((r.run_id, r.workflow, status, _time(r.updated_at), _detail(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def types_table(workflows: Sequence[WorkflowType]) -> str:
    """A table of registered workflows, one a line: a flow's steps in order last."""
    if not workflows:
        return "no workflows registered: no daemon has run with this store yet\n"
    rows = [("NAME", "KIND", "VERSION", "REGISTERED", "STEPS")]
    for w in workflows:
        steps = ", ".join(w.steps) if isinstance(w.steps, list) else "-"
        version = "-" if w.version is None else str(w.version)
        rows.append((w.name, w.kind, version, _time(w.registered_at), steps))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _retries(run: RunState) -> str | None:
    """The retries line: which step failed how often, and what came of it."""
    step, failures = run.retried_step, run.step_failures
    if step is None or failures < 1 or step == LEGACY_UNKNOWN_WORKFLOW_STEP:
        return None  # given back by processes that did not know the workflow
    if step in run.checkpoints:
        return f"{step} succeeded after {_attempts(failures)}"
    if _retrying(run):
        return f"{step}: {_attempts(failures)}; next attempt at {_time(run.resume_at)}"
    error = run.error
    if run.status is RunStatus.FAILED and error is not None and error.step == step:
        return f"{step}: all {error.attempts or failures + 1} attempts failed"
    return f"{step}: {_attempts(failures)}"


def _what(run: RunState, entry: CheckpointInfo) -> str:
    """The timeline's last column: a step's value, or what the wait was."""
    detail = entry.detail or ""
    if entry.kind == "step":
        text = short_json(run.checkpoints.get(entry.name), 60)
        if entry.name == run.retried_step and run.step_failures:
            text += f"  (after {_attempts(run.step_failures)})"
        return text
    if entry.kind == "sleep":
        return f"sleep {detail}".rstrip()
    if entry.kind == "event":
        return f"event {detail}".rstrip()
    if entry.kind == "child_start":
        return f"started child {detail}".rstrip()
    if entry.kind == "child_join":
        return f"child {detail}".rstrip()
    return f"{entry.kind} {detail}".rstrip()


def _ending(run: RunState) -> str:
    """The timeline's last line: how the run ended, or what it is doing now."""
    if run.status is RunStatus.COMPLETED:
        return f"completed: {short_json(run.result, 60)}"
    if run.status is RunStatus.FAILED:
        return "failed: " + (_detail(run) or "-")
    if run.status is RunStatus.CANCELLED:
        return f"cancelled: {run.cancel_reason or '-'}"
    return _detail(run) or run.status.value


def _timeline(run: RunState) -> list[str]:
    """Every checkpoint with its time, the time since the one before, and what it was;
    then how the run ended (with the time since the last checkpoint) or what it waits for."""
    rows: list[tuple[str, str, str, str, str]] = [
        ("#", "AT", "+TIME", "CHECKPOINT", "WHAT"),
    ]
    for i, entry in enumerate(run.timeline, 1):
        rows.append(
            (
                str(i),
                _ms_time(entry.at),
                "+" + duration(entry.duration),
                entry.name,
                _what(run, entry),
            )
        )
    if run.status.is_terminal:
        last = run.timeline[-1].at if run.timeline else run.created_at
        took = None
        if last is not None and run.finished_at is not None:
            took = (run.finished_at - last).total_seconds()
        rows.append(("end", _ms_time(run.finished_at), "+" + duration(took), "", _ending(run)))
    else:
        since = run.suspended_at if run.status is RunStatus.SUSPENDED else None
        rows.append(("...", _ms_time(since) if since else "", "", "", _ending(run)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        cells = [row[0].rjust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2])]
        cells += [row[3].ljust(widths[3]), row[4]]
        lines.append(("  " + "  ".join(cells)).rstrip())
    count = len(run.timeline)
    return [f"timeline ({count} checkpoint{'s' if count != 1 else ''}):", *lines]


def _error_field(run: RunState, error: ErrorInfo) -> tuple[str, str]:
    """The ``error`` line of a failed run, or the ``last error`` of one that goes on."""
    text = f"{error.type}: {error.message}"
    if run.status is RunStatus.FAILED:
        attempts = f" after {error.attempts} attempts" if error.attempts else ""
        return "error", text + attempts
    # A retry's cause, kept while the run goes on; a give-back's count of tries is in its
    # message already.
    counted = error.attempts and error.code is None
    return "last error", text + (f" (attempt {error.attempts})" if counted else "")


def run_detail(run: RunState) -> str:
    """A run's fields, then its timeline: each checkpoint with its time and duration,
    the waits between, and how the run ended."""
    fields: list[tuple[str, str]] = [
        ("run", run.run_id),
        (
            "workflow",
            run.workflow + (f" (version {run.version})" if run.version is not None else ""),
        ),
        ("status", run.status.value + (f" ({_detail(run)})" if _detail(run) else "")),
        *([("paused", "yes: resume it to go on")] if run.paused else []),
        ("queue", run.queue),
    ]
    if run.parent_run_id:
        fields.append(("parent", run.parent_run_id))
    fields += [
        ("created", _time(run.created_at)),
        ("updated", _time(run.updated_at)),
    ]
    if run.finished_at is not None:
        took = ""
        if run.created_at is not None:
            took = f" (after {duration((run.finished_at - run.created_at).total_seconds())})"
        fields.append(("finished", _time(run.finished_at) + took))
    fields += [
        ("attempts", str(run.attempts)),
        ("params", short_json(run.params, 100)),
    ]
    if run.status is RunStatus.COMPLETED:
        fields.append(("result", short_json(run.result, 100)))
    retries = _retries(run)
    if retries is not None:
        fields.append(("retries", retries))
    if run.error is not None:
        fields.append(_error_field(run, run.error))
    if run.policy is not None:
        fields.append(("policy", short_json(run.policy, 100)))
    if run.lease_owner:
        fields.append(("lease", f"{run.lease_owner} until {_time(run.lease_expires_at)}"))
    if run.wait_data is not None:
        fields.append(("wait data", short_json(run.wait_data, 100)))
    width = max(len(k) for k, _ in fields)
    lines = [f"{k.ljust(width)}  {v}" for k, v in fields]
    lines.append("")
    lines += _timeline(run)
    return "\n".join(lines) + "\n"
