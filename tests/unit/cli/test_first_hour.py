"""The traps of a new user's first hour with `stemd workflow … --store`: reading a store
that is not there, starting a misspelled workflow, listing what daemons serve, and
commands that import workflow modules they do not need."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from stemd._cli.main import run_cli

pytestmark = pytest.mark.timeout(60)

DRAFT = json.dumps({"draft": {"documentId": "doc-42"}})

# Every command but `start` (which may create the store), with arguments.
READERS = [
    ["get", "r1"],
    ["list"],
    ["waiting", "approvals.manager"],
    ["wait", "r1", "--timeout", "1"],
    ["emit", "approvals.manager"],
    ["types"],
    ["cancel", "r1"],
    ["rewind", "r1", "--step", "draft"],
]


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
    assert lines[0].startswith("stemd: ")
    return lines[0]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No STEMD_* variable from the environment running the tests."""
    for var in [v for v in os.environ if v.startswith("STEMD_")]:
        monkeypatch.delenv(var)


@pytest.mark.parametrize("argv", READERS, ids=lambda argv: argv[0])
def test_a_missing_store_is_refused_and_not_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    """Every command but `start`, given a SQLite store whose file does not exist, exits 1
    with one line naming the path, and creates no file."""
    db = tmp_path / "typo.db"
    status, out, err = cli(capsys, "workflow", *argv, "--store", f"sqlite:///{db}")
    assert (status, out) == (1, "")
    assert f"no SQLite store at {db}: the file does not exist" in one_line(err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", READERS, ids=lambda argv: argv[0])
def test_the_default_store_is_not_created_from_the_wrong_directory(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_env: None,
    argv: list[str],
) -> None:
    """With no --store (the default ./stemd.db) in a directory with no store, a command
    other than `start` names the missing file and leaves the directory empty."""
    monkeypatch.chdir(tmp_path)
    status, _, err = cli(capsys, "workflow", *argv)
    assert status == 1
    line = one_line(err)
    assert f"no SQLite store at {tmp_path / 'stemd.db'}" in line
    assert "is this the directory the daemon runs in?" in line
    assert list(tmp_path.iterdir()) == []


def test_start_refuses_a_workflow_no_daemon_registered(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """`start` of a name no daemon registered in the store exits 1 with one line (and a
    close match) and writes nothing; --force starts it anyway; a registered one starts."""
    status, _, err = cli(capsys, "workflow", "start", "approvals.flw", "--store", store)
    assert status == 1
    line = one_line(err)
    assert "unknown workflow 'approvals.flw': no daemon has registered it" in line
    assert "did you mean 'approvals.flow'?" in line
    assert "--force" in line
    assert json.loads(cli(capsys, "workflow", "list", "--store", store, "--json")[1]) == {
        "runs": []
    }
    status, out, _ = cli(
        capsys, "workflow", "start", "approvals.flw", "--run-id", "f", "--force", "--store", store
    )
    assert (status, out) == (0, "started approvals.flw run f\n")
    status, out, _ = cli(
        capsys, "workflow", "start", "approvals.flow", "--params", DRAFT, "--store", store
    )
    assert status == 0
    assert out.startswith("started approvals.flow run ")


def test_start_in_a_store_no_daemon_ever_used(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Where no daemon ever ran, `start` is refused without creating the store; --force
    creates it and starts the run; then another name is still refused."""
    db = tmp_path / "stemd.db"
    store = f"sqlite:///{db}"
    status, _, err = cli(capsys, "workflow", "start", "approvals.flow", "--store", store)
    assert status == 1
    assert "pass --force to create it and start the run" in one_line(err)
    assert list(tmp_path.iterdir()) == []
    argv = ["workflow", "start", "early.flow", "--run-id", "e1", "--store", store]
    assert cli(capsys, *argv, "--force")[0] == 0
    status, out, _ = cli(capsys, "workflow", "get", "e1", "--store", store, "--json")
    assert (status, json.loads(out)["run"]["status"]) == (0, "pending")
    status, _, err = cli(capsys, "workflow", "start", "other.flow", "--store", store)
    assert status == 1
    assert "no daemon has run with this store yet" in one_line(err)
    status, out, _ = cli(capsys, "workflow", "list", "--store", store, "--json")
    assert [r["run_id"] for r in json.loads(out)["runs"]] == ["e1"]


def test_types_lists_what_daemons_registered(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    """`types` prints the registered workflows (a flow's steps in order) as a table or as
    the wire's JSON; a store no daemon used has none."""
    status, out, _ = cli(capsys, "workflow", "types", "--store", store)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "VERSION", "REGISTERED", "STEPS"]
    approvals = next(line for line in lines if line.startswith("approvals.flow "))
    assert approvals.split()[:3] == ["approvals.flow", "flow", "-"]
    assert approvals.endswith("  draft, manager-review, finalize")
    status, out, _ = cli(capsys, "workflow", "types", "--store", store, "--json")
    workflows = json.loads(out)["workflows"]
    assert [w["name"] for w in workflows] == [
        "approvals.flow",
        "examples.fanout",
        "examples.flaky",
        "examples.square",
        "user.signup",
    ]
    assert workflows[0]["steps"] == ["draft", "manager-review", "finalize"]
    assert {k: workflows[0][k] for k in ("kind", "version")} == {"kind": "flow", "version": None}
    signup = workflows[-1]
    assert (signup["kind"], signup["version"], "steps" in signup) == ("script", None, False)
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert cli(capsys, "workflow", "start", "x", "--force", "--store", empty)[0] == 0
    status, out, _ = cli(capsys, "workflow", "types", "--store", empty)
    assert (status, out) == (0, "no workflows registered: no daemon has run with this store yet\n")


def test_commands_that_need_no_workflow_code_import_no_module(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    """With a config whose module does not import, `list`, `types`, `get`, `emit` and
    `waiting` work; `start`, which needs the workflows' code, names the module."""
    config = tmp_path / "stemd.toml"
    config.write_text(f'modules = ["no_such_module_anywhere"]\nstore = "{store}"\n')
    c = ["--config", str(config)]
    assert cli(capsys, "workflow", "list", *c)[:2] == (0, "no runs\n")
    assert cli(capsys, "workflow", "types", *c)[0] == 0
    assert cli(capsys, "workflow", "waiting", "t", *c)[0] == 0
    assert cli(capsys, "workflow", "emit", "t", *c)[0] == 0
    status, _, err = cli(capsys, "workflow", "get", "nobody", *c)
    assert (status, one_line(err)) == (1, "stemd: no run nobody")
    status, _, err = cli(capsys, "workflow", "start", "approvals.flow", *c)
    assert status == 1
    line = one_line(err)
    assert "modules[0]: cannot import 'no_such_module_anywhere'" in line
    assert f"looked in the app directory {Path.cwd()}" in line


def test_start_with_a_config_imports_modules_from_the_working_directory(
    capsys: pytest.CaptureFixture[str],
    store: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`start --config` imports the config's modules from the working directory, as the
    daemon does, with no PYTHONPATH."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "first_hour_flows.py").write_text(
        "import stemd\n\nlocal = stemd.Flow('first-hour.flow')\n\n\n"
        "@local.step('only')\nasync def only(ctx: stemd.FlowContext) -> int:\n    return 1\n"
    )
    config = project / "stemd.toml"
    config.write_text(f'modules = ["first_hour_flows"]\nentry_points = false\nstore = "{store}"\n')
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        argv = ["workflow", "start", "first-hour.flow", "--run-id", "fh", "--config", "stemd.toml"]
        status, out, err = cli(capsys, *argv)
    finally:
        sys.modules.pop("first_hour_flows", None)
    assert (status, err) == (0, "")
    assert out == "started first-hour.flow run fh\n"
