"""``stemd run`` fails fast and clearly: whatever the config names that cannot be used
(a listening address in use or not resolvable, a key or certificate file that cannot be
read) stops it before READY=1, with exit status 1 and one line naming the setting; no
actor is restarted over it and systemd is never told the daemon is ready."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

import pytest

from tests.integration.daemon_proc import DaemonProcess, NotifyListener, daemon_config

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _config(tmp_path: Path, **extra: object) -> Path:
    """The daemon config of this module's tests (tests/integration/daemon_proc.py)."""
    return daemon_config(tmp_path, **extra)


def _fails_at_start(tmp_path: Path, config: Path, notify: NotifyListener) -> tuple[str, str]:
    """Run the daemon; check it exits 1, says one line on stderr and never READY=1."""
    daemon = DaemonProcess(tmp_path, config, notify)
    try:
        status = daemon.wait()
    finally:
        daemon.kill()
    lines = daemon.stderr.strip().splitlines()
    assert status == 1, (status, daemon.stderr, daemon.stdout)
    assert len(lines) == 1, lines
    assert lines[0].startswith("stemd: "), lines
    assert not any("READY=1" in m.split("\n") for m in notify.drain()), notify.messages
    assert "actor crashed" not in daemon.stdout
    return lines[0], daemon.stdout


def test_metrics_address_in_use_exits_1_before_ready(
    tmp_path: Path, notify: NotifyListener, busy_port: int
) -> None:
    """A metrics_address whose port is taken stops the daemon at start: exit 1, one line
    naming the key and the address, no READY=1, no restart loop of the HTTP actor."""
    address = f"127.0.0.1:{busy_port}"
    line, _ = _fails_at_start(tmp_path, _config(tmp_path, metrics_address=address), notify)
    assert line == f"stemd: metrics_address {address}: address already in use"


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("no-such-host.invalid:9100", "cannot resolve 'no-such-host.invalid'"),
        ("192.0.2.1:9100", "cannot assign requested address"),  # not an address of ours
        ("127.0.0.1", "is not HOST:PORT"),
    ],
)
def test_a_bad_metrics_address_exits_1_before_ready(
    tmp_path: Path, notify: NotifyListener, address: str, says: str
) -> None:
    """An unresolvable host, an address this machine does not have, or no port at all
    stops the daemon at start with one line naming metrics_address."""
    line, _ = _fails_at_start(tmp_path, _config(tmp_path, metrics_address=address), notify)
    assert line.startswith("stemd: metrics_address"), line
    assert says in line


@pytest.mark.parametrize(
    ("tables", "key"),
    [
        (
            '[codec.encryption]\nactive = "k1"\nkeys = { "k1" = "file:MISSING" }',
            "codec.encryption.keys.k1",
        ),
        ('[nats_auth]\ncreds_file = "MISSING"', "nats_auth.creds_file"),
        ('[nats_auth]\nnkey_seed_file = "MISSING"', "nats_auth.nkey_seed_file"),
        ('[nats_auth]\ntls_ca_file = "MISSING"', "nats_auth.tls_ca_file"),
        (
            '[nats_auth]\ntls_cert_file = "MISSING"\ntls_key_file = "MISSING"',
            "nats_auth.tls_cert_file",
        ),
    ],
)
def test_an_unreadable_file_exits_1_before_ready(
    tmp_path: Path, notify: NotifyListener, tables: str, key: str
) -> None:
    """A key, credentials or certificate file the config names that cannot be read stops
    the daemon at start with one line naming the setting and the file."""
    missing = str(tmp_path / "no-such-file")
    config = _config(tmp_path)
    config.write_text(config.read_text() + tables.replace("MISSING", missing) + "\n")
    line, _ = _fails_at_start(tmp_path, config, notify)
    assert line.startswith(f"stemd: {key}: cannot read {missing}"), line


def test_the_bound_metrics_socket_is_the_one_served(tmp_path: Path, notify: NotifyListener) -> None:
    """With metrics_address free, the daemon binds it before READY=1: once READY=1 is
    received the endpoint answers (no window where the port is not yet listening)."""
    import signal
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = DaemonProcess(tmp_path, _config(tmp_path, metrics_address=f"127.0.0.1:{port}"), notify)
    try:
        notify.wait_for("READY=1")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            assert reply.status == 200
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
    finally:
        daemon.kill()
