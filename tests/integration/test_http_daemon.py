"""A daemon's HTTP server from the outside: readiness, the CLI's --http, and the live CLI
(watch follows a run as it advances; wait stays quiet with --json)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.helpers import http_sync
from tests.integration.daemon_proc import ROOT, DaemonProcess, NotifyListener, daemon_config

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path, notify: NotifyListener) -> Iterator[str]:
    """A daemon serving HTTP; its base URL."""
    port = _free_port()
    config = daemon_config(tmp_path, http_address=f"127.0.0.1:{port}")
    daemon = DaemonProcess(tmp_path, config, notify)
    try:
        notify.wait_for("READY=1")
        yield f"http://127.0.0.1:{port}"
    finally:
        daemon.kill()


def _stemd(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stemd", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_ready_once_serving_and_the_cli_goes_through_http(served: str) -> None:
    """After READY=1, /readyz answers 200; the CLI with --http starts, sends to and waits
    for a run, and `wait --json` prints one JSON document and nothing on stderr."""
    assert http_sync(served + "/readyz").status_code == 200
    params = json.dumps({"hold": "h.go"})
    started = _stemd(
        "workflow",
        "start",
        "test.lifecycle",
        "--params",
        params,
        "--run-id",
        "h1",
        "--http",
        served,
    )
    assert started.returncode == 0, started.stderr
    sent = _stemd("workflow", "send", "h1", "h.go", "--http", served)
    assert sent.returncode == 0, sent.stderr
    waited = _stemd("workflow", "wait", "h1", "--timeout", "20", "--json", "--http", served)
    assert (waited.returncode, waited.stderr) == (0, "")
    assert json.loads(waited.stdout)["run"]["result"] == "done"
    missing = _stemd("workflow", "get", "nope", "--http", served)
    assert (missing.returncode, missing.stderr) == (1, "stemd: no run nope\n")


def test_watch_follows_a_run_as_it_advances(served: str) -> None:
    """`workflow watch` prints the steps already done, the wait, then the steps that
    follow once the run is released, and exits 0 when it completes."""
    params = json.dumps({"hold": "h.watch"})
    started = _stemd(
        "workflow",
        "start",
        "test.lifecycle",
        "--params",
        params,
        "--run-id",
        "w1",
        "--http",
        served,
    )
    assert started.returncode == 0, started.stderr
    watch = subprocess.Popen(
        [sys.executable, "-m", "stemd", "workflow", "watch", "w1", "--http", served],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        lines = [watch.stdout.readline() for _ in range(3)]
        assert lines[0] == "run w1 of test.lifecycle\n"
        assert "flaky" in lines[1]
        assert "suspended, waiting on h.watch" in lines[2]
        sent = _stemd("workflow", "send", "w1", "h.watch", "--http", served)
        assert sent.returncode == 0, sent.stderr
        rest, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        assert "received on h.watch" in rest
        assert "status      completed" in rest
        assert rest.endswith('result "done"\n')
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)


def test_a_public_address_without_tokens_stops_the_daemon_at_start(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """http_address on all interfaces with no http_tokens: exit 1 before READY, one line
    naming the key."""
    config = daemon_config(tmp_path, http_address="0.0.0.0:0")
    daemon = DaemonProcess(tmp_path, config, notify)
    try:
        assert daemon.wait() == 1
    finally:
        daemon.kill()
    lines = daemon.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("stemd: http_address 0.0.0.0:0: not a loopback address"), lines
    assert not any("READY=1" in m for m in notify.messages)
