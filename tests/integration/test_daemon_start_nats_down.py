"""``stemd run`` started while NATS is unreachable: it stays up degraded (``READY=1`` with
``STATUS=degraded``, ``/readyz`` 503), then serves once a nats-server comes up on that
port; a misconfiguration still stops it at once. Embedded, ``App`` fails clearly."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd.testing._nats import NatsServer, find_nats_server
from tests.helpers import http, wait_until
from tests.integration.daemon_proc import DaemonProcess, NotifyListener, write_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_events(daemon: DaemonProcess) -> list[dict[str, Any]]:
    events = []
    for line in daemon.stdout.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def _bare_nats_server(port: int) -> subprocess.Popen[bytes]:
    """A nats-server on ``port`` without JetStream."""
    argv = [find_nats_server(), "-a", "127.0.0.1", "-p", str(port)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _config(tmp_path: Path, url: str, http_port: int) -> Path:
    return write_config(
        tmp_path / "stemd.toml",
        store=f"{url}?bucket=runs",
        broker=url,
        nats=url,
        log_format="json",
        http_address=f"127.0.0.1:{http_port}",
    )


async def test_started_with_nats_down_waits_degraded_then_serves(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """NATS down at start: up and degraded (no exit), then ready and running work once it is up."""
    port, http_port = _free_port(), _free_port()
    url = f"nats://127.0.0.1:{port}"
    base = f"http://127.0.0.1:{http_port}"
    (tmp_path / "nats").mkdir()
    server = NatsServer(str(tmp_path / "nats"), port=port)
    daemon = DaemonProcess(tmp_path, _config(tmp_path, url, http_port), notify)
    try:
        ready = await anyio.to_thread.run_sync(notify.wait_for, "READY=1")
        assert "STATUS=degraded (nats: " in ready, ready
        reply = await http(f"{base}/readyz")
        assert reply.status_code == 503
        state = reply.json()
        assert state["state"] == "degraded"
        assert "cannot reach" in state["degraded"]["nats"]
        assert (await http(f"{base}/healthz")).status_code == 200
        # Still up after several retries (the old daemon exited 1 before serving HTTP).
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert daemon.proc.poll() is None, daemon.stderr
            await anyio.sleep(0.2)

        await server.start()

        async def ready_now() -> bool:
            return (await http(f"{base}/readyz")).status_code == 200

        await wait_until(ready_now, timeout=30, what="/readyz 200 once NATS is up")
        async with stemd.App(store=f"{url}?bucket=runs", broker=url, workers=False) as client:
            run_id = await client.start_workflow("examples.square", {"n": 7})
            result = await client.wait_for_completion(run_id, timeout=30)
        assert result.status is stemd.RunStatus.COMPLETED
        assert result.value == 49
        assert any("STATUS=running" in m for m in notify.drain()), notify.messages
        daemon.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(daemon.wait) == 0
    finally:
        daemon.kill()
        server.kill()
    events = _log_events(daemon)
    degraded = [e for e in events if e.get("event") == "degraded"]
    recovered = [e for e in events if e.get("event") == "recovered"]
    assert [(e["dependency"], e["source"]) for e in degraded] == [("nats", "start")]
    assert [e["source"] for e in recovered] == ["start"]


async def test_a_nats_without_jetstream_yet_is_waited_for_too(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """NATS answers but the store cannot open (no JetStream yet): degraded and waiting, not
    exited; ready once a JetStream server takes the port."""
    port, http_port = _free_port(), _free_port()
    url = f"nats://127.0.0.1:{port}"
    base = f"http://127.0.0.1:{http_port}"
    bare = _bare_nats_server(port)
    (tmp_path / "nats").mkdir()
    server = NatsServer(str(tmp_path / "nats"), port=port)
    daemon = DaemonProcess(tmp_path, _config(tmp_path, url, http_port), notify)
    try:
        ready = await anyio.to_thread.run_sync(notify.wait_for, "READY=1")
        assert "STATUS=degraded (nats: " in ready, ready
        assert (await http(f"{base}/readyz")).status_code == 503
        assert daemon.proc.poll() is None, daemon.stderr
        _stop(bare)
        await server.start()

        async def ready_now() -> bool:
            return (await http(f"{base}/readyz")).status_code == 200

        await wait_until(ready_now, timeout=60, what="/readyz 200 once JetStream is up")
        daemon.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(daemon.wait) == 0
    finally:
        _stop(bare)
        daemon.kill()
        server.kill()


async def test_sigterm_while_waiting_for_nats_exits_0(
    tmp_path: Path, notify: NotifyListener
) -> None:
    """SIGTERM while waiting for NATS at start stops the daemon cleanly (exit 0, STOPPING=1)."""
    url = f"nats://127.0.0.1:{_free_port()}"
    daemon = DaemonProcess(tmp_path, _config(tmp_path, url, _free_port()), notify)
    try:
        await anyio.to_thread.run_sync(notify.wait_for, "READY=1")
        daemon.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(daemon.wait) == 0
        await anyio.to_thread.run_sync(notify.wait_for, "STOPPING=1")
    finally:
        daemon.kill()


async def test_an_invalid_nats_url_still_exits_1_at_once(tmp_path: Path) -> None:
    """A NATS URL that cannot be parsed is a configuration error, not an outage: exit 1."""
    config = _config(tmp_path, "nats://127.0.0.1:99999", _free_port())
    daemon = DaemonProcess(tmp_path, config)
    try:
        assert await anyio.to_thread.run_sync(daemon.wait) == 1
    finally:
        daemon.kill()
    lines = daemon.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "invalid NATS URL" in lines[0]


async def test_an_embedded_app_fails_clearly_when_nats_is_down() -> None:
    """`stemd.App` on a NATS nobody answers on raises TransportError naming the URL, not waits."""
    url = f"nats://127.0.0.1:{_free_port()}"
    with anyio.fail_after(30), pytest.raises(stemd.TransportError, match="cannot connect to NATS"):
        async with stemd.App(store=url, workers=False):
            pass
