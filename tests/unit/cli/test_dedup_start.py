"""`stemd workflow start --dedup-key` and `--priority`: a second start with the key prints
the run it found and starts nothing (--json: created false); a priority is recorded."""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from tests.unit.cli.test_first_hour import cli

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def test_start_with_a_dedup_key_starts_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Two starts with --dedup-key k: one run, the second names it and starts nothing."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["workflow", "start", "some.flow", "--force", "--store", store, "--dedup-key", "k"]
    status, out, _ = cli(capsys, *argv, "--json")
    assert status == 0
    first = json.loads(out)
    assert first["created"] is True
    status, out, _ = cli(capsys, *argv)
    assert status == 0
    assert out.strip() == f"run {first['run_id']} was started with dedup key k; nothing started"
    status, out, _ = cli(capsys, *argv, "--json")
    assert json.loads(out) == {"run_id": first["run_id"], "created": False}
    status, out, _ = cli(capsys, "workflow", "list", "--store", store, "--json")
    assert len(json.loads(out)["runs"]) == 1


def test_start_with_a_priority(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--priority N is recorded with the run; one out of range is a one-line error and
    starts nothing."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    argv = ["workflow", "start", "some.flow", "--force", "--store", store]
    status, _, err = cli(capsys, *argv, "--priority", "5000")
    assert status == 1
    assert len(err.strip().splitlines()) == 1
    assert "priority" in err
    status, out, _ = cli(capsys, *argv, "--priority", "-3", "--json")
    assert status == 0
    run_id = json.loads(out)["run_id"]
    db = sqlite3.connect(tmp_path / "s.db")
    try:
        assert db.execute("SELECT priority FROM runs").fetchall() == [(-3,)]
    finally:
        db.close()
    assert run_id
