"""`stemd workflow start --dedup-key`: a second start with the key prints the run it
found and starts nothing; --json says created false."""

from __future__ import annotations

import json
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
