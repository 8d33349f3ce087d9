"""The live side of ``stemd workflow``: ``watch`` follows a run's timeline as it advances,
``wait`` shows its progress on a terminal, ``list --since/--until`` pages by time.

They read the run through the same :class:`~stemd._cli.client.Client` as every other
command (``--store``, ``--nats`` or ``--http``), a few times a second. Progress goes to
stderr and only on a terminal; ``--json`` prints JSON and nothing else.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import msgspec

from stemd._cli.output import print_json, run_detail
from stemd._errors import RunNotFound, StemError
from stemd._model import RunPage, RunState, RunStatus, validate_run_id
from stemd._timefilter import parse_time

if TYPE_CHECKING:
    import argparse

    from stemd._cli.client import Client
    from stemd._model import CheckpointInfo

__all__ = ["exit_status", "list_window", "print_wait", "wait_with_progress", "watch"]

_POLL = 0.25
_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def exit_status(run: RunState, timed_out: bool, timed_out_status: int) -> int:
    """``wait``'s exit status: 0 completed, 3 failed, 4 cancelled, ``timed_out_status``."""
    if timed_out:
        return timed_out_status
    return {RunStatus.COMPLETED: 0, RunStatus.FAILED: 3, RunStatus.CANCELLED: 4}.get(run.status, 1)


def _state_line(run: RunState) -> str:
    what = run.status.value
    if run.wait_topic:
        what += f", waiting on {run.wait_topic}"
    elif run.resume_at is not None:
        what += f", until {run.resume_at:%H:%M:%S}Z"
    if run.error is not None:
        what += f": {run.error.type}: {run.error.message}"
    return what


def _entry_line(entry: CheckpointInfo, start: Any) -> str:
    offset = f"+{(entry.at - start).total_seconds():.3f}s" if entry.at and start else ""
    took = f"{entry.duration:.3f}s" if entry.duration is not None else ""
    detail = f"  {entry.detail}" if entry.detail else ""
    return f"  {offset:>10}  {entry.kind:<11} {entry.name:<28} {took:>9}{detail}"


async def _get(client: Client, run_id: str) -> RunState:
    run = await client.get(run_id)
    if run is None:
        raise RunNotFound(f"no run {run_id}")
    return run


async def watch(client: Client, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``stemd workflow watch RUN_ID``: print the run's checkpoints as they are recorded
    and its status as it changes, until it ends (or ``--timeout``); exit as ``wait``."""
    out = out or sys.stdout
    run_id = validate_run_id(args.run_id)
    shown = 0
    last_status = ""
    run = await _get(client, run_id)
    if not args.json:
        out.write(f"run {run.run_id} of {run.workflow}\n")
    with anyio.move_on_after(args.timeout if args.timeout is not None else float("inf")):
        while True:
            for entry in run.timeline[shown:]:
                if args.json:
                    out.write(msgspec.json.encode({"checkpoint": entry}).decode() + "\n")
                else:
                    out.write(_entry_line(entry, run.created_at) + "\n")
            shown = max(shown, len(run.timeline))
            status = _state_line(run)
            if status != last_status:
                if args.json:
                    line = {"status": run.status, "wait_topic": run.wait_topic}
                    out.write(msgspec.json.encode(line).decode() + "\n")
                else:
                    out.write(f"  {'':>10}  status      {status}\n")
                last_status = status
            out.flush()
            if run.status.is_terminal:
                if args.json:
                    out.write(msgspec.json.encode({"run": run}).decode() + "\n")
                elif run.status is RunStatus.COMPLETED:
                    out.write(f"result {msgspec.json.encode(run.result).decode()}\n")
                out.flush()
                return exit_status(run, False, 5)
            await anyio.sleep(_POLL)
            run = await _get(client, run_id)
    return 5


async def wait_with_progress(
    client: Client, run_id: str, timeout: float | None, err: TextIO | None = None
) -> tuple[RunState, bool]:
    """Wait for the run to end as :meth:`Client.wait` does, drawing one line of progress
    (status, current step, elapsed time) on ``err``, a terminal, erased at the end."""
    err = err or sys.stderr
    began = time.monotonic()
    frame = 0
    run = await _get(client, run_id)
    try:
        with anyio.move_on_after(timeout if timeout is not None else float("inf")):
            while not run.status.is_terminal:
                step = run.timeline[-1].step if run.timeline else "-"
                line = (
                    f"{_SPINNER[frame % len(_SPINNER)]} run {run.run_id}  {_state_line(run)}  "
                    f"checkpoints {len(run.timeline)} (last: {step})  "
                    f"{time.monotonic() - began:.1f}s"
                )
                err.write("\r\x1b[2K" + line[:200])
                err.flush()
                frame += 1
                await anyio.sleep(_POLL)
                run = await _get(client, run_id)
            return run, False
    finally:
        err.write("\r\x1b[2K")
        err.flush()
    return await _get(client, run_id), True


async def list_window(client: Client, args: argparse.Namespace) -> RunPage:
    """``list`` with ``--since``/``--until``: the page of runs created in that window,
    filtered by the ``list`` verb (``created_after``, ``created_before``)."""
    try:
        since, until = parse_time(args.since), parse_time(args.until)
    except ValueError as exc:
        raise StemError(f"--since/--until: {exc}") from None
    return await client.list_runs(
        args.workflow, args.status, args.limit, args.after, (since, until)
    )


def print_wait(run: RunState, timed_out: bool, args: argparse.Namespace) -> None:
    """What ``wait`` prints once the run has ended or the timeout passed."""
    if args.json:
        print_json({"run": run, "timed_out": timed_out})
    elif timed_out:
        sys.stdout.write(f"run {run.run_id} is still {run.status.value} after {args.timeout:g}s\n")
    else:
        sys.stdout.write(run_detail(run) + "\n")
