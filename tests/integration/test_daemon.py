"""``stemd run`` as a real process: systemd notify, clean shutdown, restarts, crashes."""

from __future__ import annotations

import json
import signal
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from tests.integration.daemon_proc import (
    MODULE,
    DaemonProcess,
    NotifyListener,
    cli,
    daemon_config,
    run_state,
    wait_file,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("restore_logging")]


def _config(tmp_path: Path, **extra: object) -> Path:
    """The daemon config of this module's tests (tests/integration/daemon_proc.py)."""
    return daemon_config(tmp_path, **{"sweep_interval": 0.2, "shutdown_grace": 10.0, **extra})


def _start_steps(tmp_path: Path, run_id: str, effects: Path, n: int, pause: float = 0.0) -> None:
    params = json.dumps({"n": n, "file": str(effects), "pause": pause})
    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    assert (
        cli(
            "workflow",
            "start",
            "test.steps",
            "--params",
            params,
            "--run-id",
            run_id,
            "--store",
            store,
            "--force",  # before the daemon first runs: no daemon has registered it yet
        )
        == 0
    )


def test_notify_protocol_ready_watchdog_status_stopping(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """The daemon says READY=1 with a STATUS, pings WATCHDOG=1, and says STOPPING=1 on SIGTERM."""
    daemon = DaemonProcess(tmp_path, _config(tmp_path), notify, env={"WATCHDOG_USEC": "200000"})
    try:
        ready = notify.wait_for("READY=1")
        assert any(f.startswith("STATUS=running") for f in ready.split("\n"))
        assert f"MAINPID={daemon.proc.pid}" in ready.split("\n")
        notify.wait_for("WATCHDOG=1")
        daemon.signal(signal.SIGTERM)
        stopping = notify.wait_for("STOPPING=1")
        assert any(f.startswith("STATUS=stopping") for f in stopping.split("\n"))
        assert daemon.wait() == 0
    finally:
        daemon.kill()


def test_notify_to_an_abstract_socket(tmp_path: Path) -> None:
    """A NOTIFY_SOCKET starting with '@' names an abstract socket, and gets READY=1 too."""
    listener = NotifyListener(tmp_path, abstract=True)
    daemon = DaemonProcess(tmp_path, _config(tmp_path), listener)
    try:
        listener.wait_for("READY=1")
        daemon.signal(signal.SIGINT)
        listener.wait_for("STOPPING=1")
        assert daemon.wait() == 0
    finally:
        daemon.kill()
        listener.close()


def test_sigterm_mid_run_then_a_new_daemon_finishes_without_rerunning_steps(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """SIGTERM while runs execute exits 0; a new daemon completes every run and no step that
    had completed runs a second time."""
    effects = tmp_path / "effects.txt"
    runs = [f"steps-{i}" for i in range(4)]
    for run_id in runs:
        _start_steps(tmp_path, run_id, effects, n=12, pause=0.01)
    total = len(runs) * 12
    first = DaemonProcess(tmp_path, _config(tmp_path), notify)
    try:
        notify.wait_for("READY=1")
        wait_file(effects, lambda lines: len(lines) >= 8)
        first.signal(signal.SIGTERM)
        assert first.wait() == 0, first.stderr
    finally:
        first.kill()
    done_by_first = len(effects.read_text().splitlines())
    assert done_by_first < total, "the runs finished before the signal: nothing was tested"

    second = DaemonProcess(tmp_path, _config(tmp_path))
    try:
        wait_file(effects, lambda lines: len(lines) >= total)
        for run_id in runs:
            assert (
                cli(
                    "workflow",
                    "wait",
                    run_id,
                    "--timeout",
                    "20",
                    "--json",
                    "--store",
                    f"sqlite:///{tmp_path / 'stemd.db'}",
                )
                == 0
            )
        second.signal(signal.SIGTERM)
        assert second.wait() == 0, second.stderr
    finally:
        second.kill()
    counts = Counter(effects.read_text().splitlines())
    assert len(counts) == total
    assert [line for line, n in counts.items() if n > 1] == []


def test_grace_period_over_releases_the_run_and_the_next_daemon_reruns_only_that_step(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """A step still running when the grace period ends is cancelled and its run released;
    the next daemon runs that step again (it never completed) and finishes the run."""
    effects = tmp_path / "effects.txt"
    hold = tmp_path / "hold"
    hold.touch()
    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    params = json.dumps({"file": str(effects), "hold": str(hold)})
    assert (
        cli(
            "workflow",
            "start",
            "test.blocking",
            "--params",
            params,
            "--run-id",
            "blk",
            "--store",
            store,
            "--force",  # before the daemon first runs: no daemon has registered it yet
        )
        == 0
    )
    first = DaemonProcess(tmp_path, _config(tmp_path, shutdown_grace=0.3), notify)
    try:
        wait_file(effects, lambda lines: "blk block-start" in lines)
        first.signal(signal.SIGTERM)
        assert first.wait(timeout=15) == 0, first.stderr
    finally:
        first.kill()
    assert "releasing the runs in flight" in first.stdout
    state = run_state(tmp_path / "stemd.db", "blk")
    assert state is not None
    assert state.status.value == "pending"
    assert state.lease_owner is None
    hold.unlink()
    second = DaemonProcess(tmp_path, _config(tmp_path))
    try:
        assert cli("workflow", "wait", "blk", "--timeout", "20", "--store", store) == 0
        second.signal(signal.SIGTERM)
        assert second.wait(timeout=15) == 0
    finally:
        second.kill()
    assert effects.read_text().splitlines() == [
        "blk block-start",
        "blk block-start",
        "blk block-end",
        "blk after",
    ]


def test_a_crashed_actor_is_restarted(tmp_path: Path, notify: NotifyListener) -> None:
    """An actor that crashes is restarted by the supervisor while the daemon keeps running."""
    starts = tmp_path / "crashy.txt"
    config = _config(tmp_path, actors=[f"{MODULE}:crashy"], restart={"backoff": 0.01})
    env = {"CRASHY_FILE": str(starts), "CRASHY_TIMES": "2"}
    daemon = DaemonProcess(tmp_path, config, notify, env=env)
    try:
        notify.wait_for("READY=1")
        wait_file(starts, lambda lines: len(lines) >= 3)
        assert daemon.proc.poll() is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
    finally:
        daemon.kill()
    assert "actor crashed; restarting" in daemon.stdout


def test_crashes_past_the_restart_budget_stop_the_daemon_non_zero(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """An actor crashing more often than the restart budget allows makes the daemon exit 70."""
    starts = tmp_path / "crashy.txt"
    config = _config(
        tmp_path, actors=[f"{MODULE}:crashy"], restart={"max_restarts": 2, "backoff": 0.01}
    )
    env = {"CRASHY_FILE": str(starts), "CRASHY_TIMES": "1000"}
    daemon = DaemonProcess(tmp_path, config, notify, env=env)
    try:
        assert daemon.wait() == 70
    finally:
        daemon.kill()
    assert len(starts.read_text().splitlines()) == 3
    assert "restart budget" in daemon.stdout
    notify.wait_for("STOPPING=1")


def test_log_lines_are_json_and_carry_run_workflow_and_step(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """On a pipe the daemon logs JSON lines; a line logged inside a step names its run,
    workflow and step."""
    effects = tmp_path / "effects.txt"
    _start_steps(tmp_path, "logged", effects, n=1)
    daemon = DaemonProcess(tmp_path, _config(tmp_path), notify)
    try:
        wait_file(effects, lambda lines: len(lines) >= 1)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.kill()
    records = [json.loads(line) for line in daemon.stdout.splitlines() if line.strip()]
    effect = [r for r in records if r.get("event") == "side effect"]
    assert effect, records
    assert effect[0]["run_id"] == "logged"
    assert effect[0]["workflow"] == "test.steps"
    assert effect[0]["step"] == "work"
    assert {"started", "stopping", "stopped"} <= {r.get("event") for r in records}


def test_sighup_reloads_the_log_level(tmp_path: Path, notify: NotifyListener) -> None:
    """SIGHUP re-reads the config file and applies its log_level without a restart."""
    config = _config(tmp_path, log_level="warning")
    daemon = DaemonProcess(tmp_path, config, notify)
    try:
        notify.wait_for("READY=1")
        text = config.read_text().replace('log_level = "warning"', 'log_level = "info"')
        config.write_text(text.replace("sweep_interval = 0.2", "sweep_interval = 0.3"))
        daemon.signal(signal.SIGHUP)
        wait_file(daemon.stdout_path, lambda lines: any('"reloaded"' in line for line in lines))
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.kill()
    records = [json.loads(line) for line in daemon.stdout.splitlines() if line.strip()]
    assert "started" not in {r.get("event") for r in records}  # logged at info, before HUP
    reloaded = next(r for r in records if r.get("event") == "reloaded")
    assert reloaded["log_level"] == "info"
    assert reloaded["needs_restart"] == ["sweep_interval"]


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"concurrency": "many"}, "concurrency"),
        ({"colour": "blue"}, "colour"),
        ({"store": "sqlite:////nonexistent-dir/stemd.db"}, "store"),
        ({"modules": ["no_such_module_here"]}, "modules[0]"),
    ],
)
def test_a_bad_config_exits_non_zero_with_one_line_naming_the_key(
    tmp_path: Path, extra: dict[str, object], key: str
) -> None:
    """A wrong type, an unknown key, an unreachable store or a missing module stops the
    daemon at start with one line on stderr naming the key."""
    daemon = DaemonProcess(tmp_path, _config(tmp_path, **extra))
    try:
        assert daemon.wait() == 1
    finally:
        daemon.kill()
    lines = daemon.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert key in lines[0]


def test_metrics_and_health_endpoint(tmp_path: Path, notify: NotifyListener) -> None:
    """With metrics_address set, the daemon serves Prometheus /metrics and /healthz."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = _config(tmp_path, metrics_address=f"127.0.0.1:{port}")
    daemon = DaemonProcess(tmp_path, config, notify)
    try:
        notify.wait_for("READY=1")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            assert reply.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert "stemd_up 1" in text
        assert "stemd_worker_concurrency 32" in text
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.kill()


def test_no_config_runs_embedded_with_the_bundled_examples(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """With no config: SQLite in ./stemd.db, the in-process broker, the example workflows."""
    daemon = DaemonProcess(tmp_path, None, notify)
    try:
        notify.wait_for("READY=1")
        assert (tmp_path / "stemd.db").exists()
        store = f"sqlite:///{tmp_path / 'stemd.db'}"
        assert cli("workflow", "start", "examples.flaky", "--run-id", "ex", "--store", store) == 0
        assert cli("workflow", "wait", "ex", "--timeout", "20", "--store", store) == 0
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        daemon.kill()
    started = next(json.loads(line) for line in daemon.stdout.splitlines() if '"started"' in line)
    assert started["broker"] == "in-process"
    assert started["store"] == "sqlite:///./stemd.db"
    assert {"approvals.flow", "user.signup", "examples.fanout"} <= set(started["workflows"])
