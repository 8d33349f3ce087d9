"""What ``stemd run`` logs: at info, one line per run started, completed or failed and
per step retry; at debug, stemd's own lines and not its drivers' (aiosqlite, nats,
asyncio), which ``log_drivers``/``--log-drivers`` turn on separately."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.daemon_proc import (
    ROOT,
    DaemonProcess,
    NotifyListener,
    cli,
    daemon_config,
    wait_file,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("restore_logging")]


def _config(tmp_path: Path, **extra: object) -> Path:
    """The daemon config of this module's tests (tests/integration/daemon_proc.py)."""
    return daemon_config(tmp_path, **{"sweep_interval": 0.2, **extra})


def _start(tmp_path: Path, workflow: str, run_id: str, params: dict[str, Any]) -> None:
    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    argv = ["workflow", "start", workflow, "--params", json.dumps(params), "--run-id", run_id]
    # Started before any daemon has registered the workflows in this store.
    assert cli(*argv, "--store", store, "--force") == 0


def _records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _ended(count: int) -> Any:
    def check(lines: list[str]) -> bool:
        ends = [line for line in lines if '"run completed"' in line or '"run failed"' in line]
        return len(ends) >= count

    return check


def _serve_until(daemon: DaemonProcess, ends: int) -> list[dict[str, Any]]:
    """Wait for ``ends`` runs to end, stop the daemon, return its log records."""
    try:
        wait_file(daemon.stdout_path, _ended(ends))
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
    finally:
        daemon.kill()
    return _records(daemon.stdout)


def test_info_logs_one_line_per_run_start_end_failure_and_retry(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """At info, each of 15 runs logs exactly 'run started' and 'run completed'; a run whose
    step fails once adds one 'step failed; retrying' (step, attempt); a failing run ends
    with one 'run failed' (status, duration); nothing else names a run."""
    plain = [f"plain-{i}" for i in range(15)]
    for run_id in plain:
        _start(tmp_path, "test.lifecycle", run_id, {})
    _start(tmp_path, "test.lifecycle", "flaky", {"fail": 1})
    _start(tmp_path, "test.doomed", "doomed", {})
    daemon = DaemonProcess(tmp_path, _config(tmp_path), notify)
    records = _serve_until(daemon, len(plain) + 2)
    per_run: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if "run_id" in record:
            per_run.setdefault(record["run_id"], []).append(record)
    assert set(per_run) == {*plain, "flaky", "doomed"}
    for run_id in plain:
        events = [r["event"] for r in per_run[run_id]]
        assert events == ["run started", "run completed"], (run_id, events)
        started, completed = per_run[run_id]
        assert (started["workflow"], started["status"]) == ("test.lifecycle", "running")
        assert completed["status"] == "completed"
        assert isinstance(completed["duration"], float)
        assert completed["duration"] >= 0
    flaky = per_run["flaky"]
    assert [r["event"] for r in flaky] == ["run started", "step failed; retrying", "run completed"]
    retry = flaky[1]
    assert (retry["step"], retry["attempt"], retry["level"]) == ("flaky", 1, "warning")
    assert retry["error"] == "RuntimeError: flaky attempt 1"
    doomed = per_run["doomed"]
    assert [r["event"] for r in doomed] == ["run started", "run failed"]
    assert (doomed[1]["status"], doomed[1]["step"]) == ("failed", "boom")
    assert doomed[1]["duration"] >= 0


@pytest.mark.parametrize(
    ("extra", "options", "drivers"),
    [
        ({"log_level": "debug"}, [], False),
        ({}, ["-v"], False),
        ({"log_level": "debug", "log_drivers": "debug"}, [], True),
        ({}, ["-v", "--log-drivers", "debug"], True),
    ],
)
def test_debug_shows_stemd_and_the_drivers_only_when_asked(
    tmp_path: Path,
    notify: NotifyListener,
    extra: dict[str, object],
    options: list[str],
    drivers: bool,
) -> None:
    """log_level = "debug" (or -v) shows stemd's debug lines, and aiosqlite's only with
    log_drivers = "debug" (or --log-drivers debug)."""
    _start(tmp_path, "test.steps", "stepped", {"n": 2, "file": str(tmp_path / "effects")})
    daemon = DaemonProcess(tmp_path, _config(tmp_path, **extra), notify, options=options)
    records = _serve_until(daemon, 1)
    loggers = Counter(r.get("logger") for r in records)
    assert any(r["event"] == "slice ended" and r["level"] == "debug" for r in records), records
    if drivers:
        assert loggers["aiosqlite"] > 0, loggers
    else:
        assert loggers["aiosqlite"] == 0, loggers


@pytest.mark.parametrize(
    ("options", "drivers"), [(["-v"], False), (["-v", "--log-drivers", "debug"], True)]
)
def test_client_verbose_leaves_the_drivers_out(
    tmp_path: Path, options: list[str], drivers: bool
) -> None:
    """`stemd -v workflow …` logs stemd's lines, not one per SQLite call; --log-drivers
    debug adds those."""
    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    # The store must exist: read verbs never create one.
    assert cli("workflow", "start", "test.lifecycle", "--store", store, "--force") == 0
    result = subprocess.run(
        [sys.executable, "-m", "stemd", *options, "workflow", "list", "--store", store],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert ("aiosqlite" in result.stderr) is drivers, result.stderr
