"""``stemd config check`` finds what would stop ``stemd run`` at start: files the config
names that cannot be read, and a ``metrics_address`` that cannot be bound."""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING

import pytest

from stemd._cli.main import run_cli

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``stemd ARGV``; return (status, stdout, stderr)."""
    capsys.readouterr()
    status = run_cli(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_line(err: str) -> str:
    """The single line on stderr (fails if there are more, e.g. a traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config with a SQLite store in tmp_path and no entry points."""
    path = tmp_path / "stemd.toml"
    path.write_text(f'entry_points = false\nstore = "sqlite:///{tmp_path}/x.db"\n')
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that another socket listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("offline", [False, True])
def test_an_unreadable_encryption_key_file_is_reported(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path, offline: bool
) -> None:
    """An encryption key file that cannot be read fails the check (offline too), with one
    line naming the key."""
    missing = tmp_path / "no-such.key"
    config.write_text(
        config.read_text()
        + f'[codec.encryption]\nactive = "k1"\nkeys = {{ "k1" = "file:{missing}" }}\n'
    )
    argv = ["config", "check", "--config", str(config)] + (["--offline"] if offline else [])
    status, _, err = cli(capsys, *argv)
    assert status == 1
    assert one_line(err) == (
        f"stemd: codec.encryption.keys.k1: cannot read {missing}: No such file or directory"
    )


def test_a_readable_encryption_key_file_passes(
    capsys: pytest.CaptureFixture[str], config: Path, tmp_path: Path
) -> None:
    """A key file that reads as a key passes, and its key is never printed."""
    key = tmp_path / "k1.key"
    key.write_bytes(os.urandom(32))
    config.write_text(
        config.read_text()
        + f'[codec.encryption]\nactive = "k1"\nkeys = {{ "k1" = "file:{key}" }}\n'
    )
    status, out, _ = cli(capsys, "config", "check", "--config", str(config))
    assert status == 0
    assert 'keys.k1 = "(not shown)"' in out


def test_an_unresolvable_metrics_address_is_reported(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    """A metrics_address whose host does not resolve fails the check with one line."""
    config.write_text(config.read_text() + 'metrics_address = "no-such-host.invalid:9100"\n')
    status, _, err = cli(capsys, "config", "check", "--config", str(config))
    assert status == 1
    assert one_line(err).startswith(
        "stemd: metrics_address no-such-host.invalid:9100: cannot resolve"
    )


def test_a_metrics_address_in_use_is_a_warning(
    capsys: pytest.CaptureFixture[str], config: Path, busy_port: int
) -> None:
    """A metrics_address in use is reported but passes: it may be this config's daemon."""
    address = f"127.0.0.1:{busy_port}"
    config.write_text(config.read_text() + f'metrics_address = "{address}"\n')
    status, out, _ = cli(capsys, "config", "check", "--config", str(config))
    assert status == 0
    assert f"# warning: metrics_address {address}: address already in use" in out
    status, out, _ = cli(capsys, "config", "check", "--config", str(config), "--json")
    assert status == 0
    [warning] = json.loads(out)["warnings"]
    assert warning.startswith(f"metrics_address {address}: address already in use")


def test_the_database_file_is_printed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative SQLite store is shown with the absolute file it names from here."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "stemd.toml"
    path.write_text('entry_points = false\nstore = "sqlite:///stemd.db"\n')
    status, out, _ = cli(capsys, "config", "check", "--config", str(path))
    assert status == 0
    assert f"# database file: {tmp_path / 'stemd.db'}\n" in out
    status, out, _ = cli(capsys, "config", "check", "--config", str(path), "--json")
    assert json.loads(out)["database"] == str(tmp_path / "stemd.db")
