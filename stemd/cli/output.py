"""How the CLI shows things: JSON for machines, tables and timelines for people."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec

from stemd.model import RunState

__all__ = ["print_json", "run_detail", "runs_table", "short_json"]


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


def _detail(run: RunState) -> str:
    """What a person wants to know next about the run, in a few words."""
    if run.error is not None:
        where = f" in {run.error.step}" if run.error.step else ""
        return f"{run.error.type}{where}: {run.error.message}"
    if run.cancel_reason:
        return f"cancelled: {run.cancel_reason}"
    if run.wait_topic:
        until = f" (until {_time(run.resume_at)})" if run.resume_at else ""
        return f"waiting for event {run.wait_topic}{until}"
    if run.wait_child:
        return f"waiting for child {run.wait_child}"
    if run.resume_at and run.status.value in ("suspended", "pending"):
        return f"resumes at {_time(run.resume_at)}"
    if run.status.value == "completed":
        return f"result {short_json(run.result, 40)}"
    return ""


def runs_table(runs: Sequence[RunState]) -> str:
    """A table of runs, one a line, columns aligned."""
    if not runs:
        return "no runs\n"
    rows = [("RUN ID", "WORKFLOW", "STATUS", "UPDATED", "DETAIL")]
    for r in runs:
        rows.append((r.run_id, r.workflow, r.status.value, _time(r.updated_at), _detail(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def run_detail(run: RunState) -> str:
    """A run's fields, then its checkpoints in order: the timeline of what it did."""
    fields: list[tuple[str, str]] = [
        ("run", run.run_id),
        ("workflow", run.workflow),
        ("status", run.status.value + (f" ({_detail(run)})" if _detail(run) else "")),
        ("queue", run.queue),
    ]
    if run.parent_run_id:
        fields.append(("parent", run.parent_run_id))
    fields += [
        ("created", _time(run.created_at)),
        ("updated", _time(run.updated_at)),
        ("attempts", str(run.attempts)),
        ("params", short_json(run.params, 100)),
    ]
    if run.status.value == "completed":
        fields.append(("result", short_json(run.result, 100)))
    if run.error is not None:
        attempts = f" after {run.error.attempts} attempts" if run.error.attempts else ""
        fields.append(("error", f"{run.error.type}: {run.error.message}{attempts}"))
    if run.policy is not None:
        fields.append(("policy", short_json(run.policy, 100)))
    if run.lease_owner:
        fields.append(("lease", f"{run.lease_owner} until {_time(run.lease_expires_at)}"))
    width = max(len(k) for k, _ in fields)
    lines = [f"{k.ljust(width)}  {v}" for k, v in fields]
    lines.append("")
    if not run.checkpoints:
        lines.append("checkpoints: none yet")
    else:
        lines.append(f"checkpoints ({len(run.checkpoints)}):")
        name_width = max(len(name) for name in run.checkpoints)
        for i, (name, value) in enumerate(run.checkpoints.items(), 1):
            lines.append(f"  {i:>3}  {name.ljust(name_width)}  {short_json(value, 70)}")
    if not run.status.is_terminal:
        lines.append(f"  ...  {_detail(run) or run.status.value}")
    return "\n".join(lines) + "\n"
