"""`stemd schedule …`, `stemd workflow fork` and `workflow start --ttl --parent`,
straight to a SQLite store: human and JSON output, bad input as one line on stderr."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import anyio
import pytest
from stemd_examples import approvals, fanout, flaky, signup, square

import stemd
from stemd._cli.main import run_cli

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)

EXAMPLES = [approvals, fanout, flaky, signup, square]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``stemd ARGV``; return (status, stdout, stderr)."""
    capsys.readouterr()
    status = run_cli(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def scheduled(tmp_path: Path) -> str:
    """A SQLite store where a daemon serving the examples and a daily schedule ran."""
    url = f"sqlite:///{tmp_path / 'stemd.db'}"
    nightly = stemd.Schedule("nightly", "examples.square", "0 2 * * *", {"n": 3})

    async def main() -> None:
        async with stemd.App(store=url, workflows=EXAMPLES, schedules=[nightly]):
            pass

    anyio.run(main)
    return url


def test_schedule_list_pause_resume_trigger(
    capsys: pytest.CaptureFixture[str], scheduled: str
) -> None:
    """The schedules recorded in the store are listed, paused, resumed and triggered
    from the command line; the triggered run exists with the schedule's params."""
    status, out, _ = cli(capsys, "schedule", "list", "--store", scheduled)
    assert status == 0
    assert "nightly" in out
    assert "examples.square" in out
    assert "active" in out
    status, out, _ = cli(capsys, "schedule", "pause", "nightly", "--store", scheduled, "--json")
    assert status == 0
    assert json.loads(out)["schedule"]["paused"] is True
    status, out, _ = cli(capsys, "schedule", "list", "--store", scheduled, "--json")
    [listed] = json.loads(out)["schedules"]
    assert listed["paused"] is True
    assert listed["next_tick"] is None
    status, out, _ = cli(capsys, "schedule", "resume", "nightly", "--store", scheduled)
    assert status == 0
    assert "resumed schedule nightly" in out
    status, out, _ = cli(
        capsys, "schedule", "trigger", "nightly", "--run-id", "by-hand", "--store", scheduled
    )
    assert status == 0
    assert "run by-hand" in out
    status, out, _ = cli(capsys, "workflow", "get", "by-hand", "--store", scheduled, "--json")
    assert json.loads(out)["run"]["params"] == {"n": 3}


def test_schedule_commands_on_an_unknown_schedule_fail_in_one_line(
    capsys: pytest.CaptureFixture[str], scheduled: str
) -> None:
    """pause, resume and trigger of a schedule that is not there exit non-zero with one
    line on stderr."""
    for verb in ("pause", "resume", "trigger"):
        status, out, err = cli(capsys, "schedule", verb, "nope", "--store", scheduled)
        assert status != 0
        assert out == ""
        assert err.count("\n") == 1
        assert "no schedule 'nope'" in err


def test_fork_and_start_with_ttl_and_parent(
    capsys: pytest.CaptureFixture[str], scheduled: str
) -> None:
    """`workflow fork` makes a new run from a run's checkpoints; `workflow start --ttl
    --parent` records both; an unknown parent or step is refused in one line."""
    status, out, _ = cli(
        capsys, "workflow", "start", "examples.square", "--params", '{"n": 4}',
        "--run-id", "parent-1", "--store", scheduled,
    )  # fmt: skip
    assert status == 0
    status, out, _ = cli(
        capsys, "workflow", "start", "examples.square", "--params", '{"n": 5}', "--ttl", "60",
        "--parent", "parent-1", "--run-id", "child-1", "--store", scheduled,
    )  # fmt: skip
    assert status == 0
    status, out, _ = cli(capsys, "workflow", "get", "child-1", "--store", scheduled, "--json")
    run = json.loads(out)["run"]
    assert run["parent_run_id"] == "parent-1"
    assert run["ttl"] == 60
    status, _, err = cli(
        capsys, "workflow", "start", "examples.square", "--parent", "ghost", "--store", scheduled
    )
    assert status != 0
    assert "no parent run ghost" in err
    status, out, _ = cli(
        capsys, "workflow", "fork", "parent-1", "--step", "compute", "--store", scheduled, "--json"
    )
    assert status == 0
    forked = json.loads(out)["run_id"]
    assert forked != "parent-1"
    status, out, _ = cli(capsys, "workflow", "get", forked, "--store", scheduled, "--json")
    assert json.loads(out)["run"]["params"] == {"n": 4}
    status, _, err = cli(
        capsys, "workflow", "fork", "parent-1", "--step", "nope", "--store", scheduled
    )
    assert status != 0
    assert "has no step 'nope'" in err
    status, _, err = cli(
        capsys, "workflow", "fork", "ghost", "--step", "compute", "--store", scheduled
    )
    assert status != 0
    assert "no run ghost" in err


def test_config_check_refuses_a_schedule_of_an_unloaded_workflow(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`stemd config check` names the [[schedules]] entry whose workflow no module or
    entry point provides, and accepts one that is loaded."""
    config = tmp_path / "stemd.toml"
    config.write_text(
        f'store = "sqlite:///{tmp_path / "x.db"}"\n'
        '[[schedules]]\nname = "ok"\nworkflow = "examples.square"\ncron = "@daily"\n'
        "params = { n = 2 }\n"
    )
    status, out, _ = cli(capsys, "config", "check", "--config", str(config), "--offline")
    assert status == 0
    assert "[[schedules]]" in out
    config.write_text(
        config.read_text() + '[[schedules]]\nname = "bad"\nworkflow = "no.such"\ncron = "@daily"\n'
    )
    status, out, err = cli(capsys, "config", "check", "--config", str(config), "--offline")
    assert status != 0
    assert "schedules[1]: workflow 'no.such' is not among the loaded workflows" in err
