"""`stemd workflow …` straight to a SQLite store (no daemon): every command, human and JSON
output, and bad input as one line on stderr with a non-zero exit."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from stemd_examples import approvals, fanout, flaky, signup, square

import stemd
from stemd._cli.main import run_cli

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(60)

EXAMPLES = [approvals, fanout, flaky, signup, square]
DRAFT = json.dumps({"draft": {"documentId": "doc-42"}})


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``stemd ARGV``; return (status, stdout, stderr)."""
    capsys.readouterr()
    status = run_cli(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def start(
    capsys: pytest.CaptureFixture[str],
    store: str,
    workflow: str,
    run_id: str,
    params: str | None = None,
    *more: str,
) -> tuple[int, str, str]:
    """``stemd workflow start WORKFLOW --run-id RUN_ID [--params PARAMS] --store STORE``."""
    argv = ["workflow", "start", workflow, "--run-id", run_id, "--store", store]
    if params is not None:
        argv += ["--params", params]
    return cli(capsys, *argv, *more)


def one_line(err: str) -> str:
    """The single line on stderr (fails if there are more, e.g. a traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stemd")
    return lines[0]


def drive(store: str, run_id: str, *statuses: str) -> stemd.RunState:
    """Execute runs with a worker App on the same store until ``run_id`` is in ``statuses``."""

    async def main() -> stemd.RunState:
        async with stemd.App(
            store=store,
            workflows=EXAMPLES,
            options=stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.02)),
        ) as app:
            with anyio.fail_after(20):
                while True:
                    state = await app.get_run(run_id)
                    if state is not None and state.status.value in statuses:
                        return state
                    await anyio.sleep(0.02)

    return anyio.run(main)


def test_start_prints_the_run_id_and_is_idempotent(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """`start` creates a run once; the same --run-id again starts nothing."""
    status, out, _ = start(capsys, store, "approvals.flow", "doc-42", DRAFT)
    assert status == 0
    assert out == "started approvals.flow run doc-42\n"
    status, out, _ = start(capsys, store, "approvals.flow", "doc-42", None, "--json")
    assert status == 0
    assert json.loads(out) == {"run_id": "doc-42", "created": False}


def test_start_generates_an_id_and_reads_params_from_a_file(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    """Without --run-id an id is generated; --params @FILE reads JSON from a file."""
    params = tmp_path / "params.json"
    params.write_text(DRAFT)
    status, out, _ = cli(
        capsys,
        "workflow",
        "start",
        "approvals.flow",
        "--params",
        f"@{params}",
        "--store",
        store,
        "--json",
    )
    assert status == 0
    run_id = json.loads(out)["run_id"]
    status, out, _ = cli(capsys, "workflow", "get", run_id, "--store", store, "--json")
    assert json.loads(out)["run"]["params"] == {"draft": {"documentId": "doc-42"}}


def test_get_shows_the_checkpoint_timeline(capsys: pytest.CaptureFixture[str], store: str) -> None:
    """`get` shows the run's fields and its checkpoints in order; --json is the RunState."""
    start(capsys, store, "approvals.flow", "r1", DRAFT)
    drive(store, "r1", "suspended")
    status, out, _ = cli(capsys, "workflow", "get", "r1", "--store", store)
    assert status == 0
    assert "workflow  approvals.flow" in out
    assert "suspended (waiting for event approvals.manager)" in out
    assert "timeline (1 checkpoint):" in out
    assert re.search(
        r'\n +1  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z +\+\d+\.\d{3}s  draft +"doc-42"\n', out
    )
    assert re.search(r"\n +\.\.\.  .*waiting for event approvals\.manager\n", out)
    status, out, _ = cli(capsys, "workflow", "get", "r1", "--store", store, "--json")
    run = json.loads(out)["run"]
    assert run["status"] == "suspended"
    assert run["checkpoints"] == {"draft": "doc-42"}
    assert run["wait_topic"] == "approvals.manager"
    assert datetime.fromisoformat(run["created_at"]).tzinfo is not None
    (entry,) = run["timeline"]
    assert (entry["name"], entry["kind"], entry["step"]) == ("draft", "step", "draft")
    assert datetime.fromisoformat(entry["at"]) >= datetime.fromisoformat(run["created_at"])
    assert entry["duration"] >= 0


def test_get_shows_retries_and_the_error_of_a_failed_run(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """`get` of a run that failed after retries shows them, its error and how it ended."""
    start(capsys, store, "examples.flaky", "bad", '{"fail_times": 9}')
    drive(store, "bad", "failed")
    status, out, _ = cli(capsys, "workflow", "get", "bad", "--store", store)
    assert status == 0
    assert "retries   fetch: all 5 attempts failed\n" in out
    assert "error     ConnectionError: upstream unavailable (attempt 5) after 5 attempts\n" in out
    assert "timeline (0 checkpoints):" in out
    assert re.search(r"\n +end  \S+ \S+ +\+\d+\.\d{3}s +failed: ConnectionError in fetch: ", out)
    status, out, _ = cli(capsys, "workflow", "get", "bad", "--store", store, "--json")
    run = json.loads(out)["run"]
    assert (run["retried_step"], run["step_failures"]) == ("fetch", 4)
    assert run["timeline"] == []


def test_list_is_a_table_or_json_and_filters(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """`list` prints a table (or JSON) filtered by workflow, status and limit."""
    for run_id in ("a", "b"):
        start(capsys, store, "approvals.flow", run_id, DRAFT)
    start(capsys, store, "examples.flaky", "c")
    status, out, _ = cli(capsys, "workflow", "list", "--store", store)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "ID", "WORKFLOW", "STATUS", "UPDATED", "DETAIL"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["a", "b", "c"]
    status, out, _ = cli(
        capsys,
        "workflow",
        "list",
        "--workflow",
        "approvals.flow",
        "--status",
        "PENDING",
        "--limit",
        "1",
        "--store",
        store,
        "--json",
    )
    runs = json.loads(out)["runs"]
    assert len(runs) == 1
    assert runs[0]["workflow"] == "approvals.flow"
    status, out, _ = cli(capsys, "workflow", "list", "--status", "failed", "--store", store)
    assert (status, out) == (0, "no runs\n")


def test_waiting_emit_wait_and_rewind(capsys: pytest.CaptureFixture[str], store: str) -> None:
    """A run waiting on a topic is listed, resumed by `emit`, awaited by `wait` (exit 0),
    and rewound to a step by `rewind`."""
    start(capsys, store, "approvals.flow", "ap", DRAFT)
    drive(store, "ap", "suspended")
    status, out, _ = cli(capsys, "workflow", "waiting", "approvals.manager", "--store", store)
    assert status == 0
    assert "ap" in out.splitlines()[1].split()
    status, out, _ = cli(
        capsys,
        "workflow",
        "emit",
        "approvals.manager",
        "--payload",
        '{"approvedBy": "ana"}',
        "--store",
        store,
        "--json",
    )
    assert (status, json.loads(out)) == (0, {"resumed": 1})
    status, out, _ = cli(
        capsys, "workflow", "emit", "approvals.manager", "--retain", "0", "--store", store
    )
    assert (status, out) == (0, "resumed 0 runs waiting on approvals.manager\n")
    drive(store, "ap", "completed")
    status, out, _ = cli(
        capsys, "workflow", "wait", "ap", "--timeout", "5", "--store", store, "--json"
    )
    assert status == 0
    reply = json.loads(out)
    assert reply["timed_out"] is False
    assert reply["run"]["result"] == "approved-by:ana"
    status, out, _ = cli(
        capsys, "workflow", "rewind", "ap", "--step", "manager-review", "--store", store
    )
    assert status == 0
    state = drive(store, "ap", "suspended")
    assert list(state.checkpoints) == ["draft"]


def test_wait_exit_status_says_how_the_run_ended(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """`wait` exits 0 completed, 3 failed, 4 cancelled, 5 timed out."""
    start(capsys, store, "examples.flaky", "bad", '{"fail_times": 9}')
    start(capsys, store, "examples.flaky", "good")
    drive(store, "bad", "failed")
    drive(store, "good", "completed")
    assert cli(capsys, "workflow", "wait", "good", "--store", store)[0] == 0
    status, out, _ = cli(capsys, "workflow", "wait", "bad", "--store", store)
    assert status == 3
    assert "ConnectionError: upstream unavailable (attempt 5) after 5 attempts" in out
    start(capsys, store, "approvals.flow", "slow", DRAFT)
    status, out, _ = cli(capsys, "workflow", "wait", "slow", "--timeout", "0.2", "--store", store)
    assert status == 5
    assert "still pending after 0.2s" in out
    status, out, _ = cli(capsys, "workflow", "cancel", "slow", "--reason", "test", "--store", store)
    assert (status, out) == (0, "cancelled run slow\n")
    assert cli(capsys, "workflow", "wait", "slow", "--store", store)[0] == 4
    status, out, _ = cli(capsys, "workflow", "cancel", "slow", "--store", store, "--json")
    assert (status, json.loads(out)) == (1, {"cancelled": False})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["start", "approvals.flow", "--params", "{oops"], "--params is not valid JSON"),
        (["emit", "t", "--payload", "[1,"], "--payload is not valid JSON"),
        # An argument that is not UTF-8 (Python's argv carries its bytes escaped).
        (["emit", "t", "--payload", os.fsdecode(b'"\xc5E"')], "--payload is not valid JSON"),
        (["start", "approvals.flow", "--run-id", "no spaces"], "invalid run id"),
        (["get", "no/slash"], "invalid run id"),
        (["get", "nobody"], "no run nobody"),
        (["wait", "nobody"], "no run nobody"),
        (["list", "--status", "sleepy"], "unknown status 'sleepy'"),
        (["list", "--limit", "0"], "--limit must be a positive integer"),
        (["emit", "bad topic!"], "invalid topic"),
        (["rewind", "nobody", "--step", "x"], "not rewound"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(
    capsys: pytest.CaptureFixture[str], store: str, argv: list[str], message: str
) -> None:
    """Malformed JSON, a bad run id, an unknown run or status: exit 1, one line on stderr."""
    status, _, err = cli(capsys, "workflow", *argv, "--store", store)
    assert status == 1
    assert message in one_line(err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["start", "x", "--max-run-duration", "-1"], "--max-run-duration: '-1': must not be"),
        (["start", "x", "--max-suspend-duration", "inf"], "'inf': must be at most"),
        (["wait", "r", "--timeout", "nan"], "--timeout: 'nan': must be a number of seconds"),
        (["wait", "r", "--timeout", "1e400"], "must be at most 3155760000 seconds"),
        (["list", "--request-timeout", "soon"], "'soon' is not a number of seconds"),
    ],
)
def test_bad_durations_are_usage_errors(
    capsys: pytest.CaptureFixture[str], store: str, argv: list[str], message: str
) -> None:
    """A duration that is negative, NaN, infinite or past 100 years: exit 2 (usage), one
    line naming the option."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(["workflow", *argv, "--store", store])
    assert exit_.value.code == 2
    assert message in one_line(capsys.readouterr().err)


def test_a_huge_list_limit_lists_everything(capsys: pytest.CaptureFixture[str], store: str) -> None:
    """``--limit`` past SQLite's integers means "all", not an internal error."""
    assert cli(capsys, "workflow", "start", "approvals.flow", "--store", store)[0] == 0
    status, out, err = cli(
        capsys, "workflow", "list", "--limit", str(10**20), "--store", store, "--json"
    )
    assert (status, err) == (0, "")
    assert len(json.loads(out)["runs"]) == 1


def test_params_from_a_file_that_is_not_utf8_are_refused(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    """``--params @FILE`` with bytes that are not UTF-8: one line, exit 1, no run."""
    bad = tmp_path / "params.json"
    bad.write_bytes(b'{"name": "caf\xe9"}')
    status, _, err = cli(
        capsys, "workflow", "start", "approvals.flow", "--params", f"@{bad}", "--store", store
    )
    assert status == 1
    assert "--params is not valid JSON" in one_line(err)
    assert json.loads(cli(capsys, "workflow", "list", "--store", store, "--json")[1]) == {
        "runs": []
    }


def test_unknown_workflow_and_step_with_a_config(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    """With --config naming the modules, an unknown workflow or step is refused in one line."""
    config = tmp_path / "stemd.toml"
    config.write_text(f'modules = ["stemd_examples"]\nentry_points = false\nstore = "{store}"\n')
    status, _, err = cli(capsys, "workflow", "start", "no.such.flow", "--config", str(config))
    assert status == 1
    assert "unknown workflow 'no.such.flow'" in one_line(err)
    assert (
        cli(
            capsys,
            "workflow",
            "start",
            "approvals.flow",
            "--params",
            DRAFT,
            "--run-id",
            "r",
            "--config",
            str(config),
        )[0]
        == 0
    )
    status, _, err = cli(
        capsys, "workflow", "rewind", "r", "--step", "nope", "--config", str(config)
    )
    assert status == 1
    assert "has no step 'nope'" in one_line(err)


def test_unreachable_store_and_nats_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A store in a missing directory, or a NATS nobody serves, is one clear line."""
    missing = "sqlite:////no/such/dir/x.db"
    status, _, err = cli(capsys, "workflow", "start", "w", "--force", "--store", missing)
    assert status == 1
    assert one_line(err).startswith("stemd: --store: cannot create /no/such/dir/x.db")
    status, _, err = cli(capsys, "workflow", "list", "--store", missing)
    assert status == 1
    assert one_line(err).startswith("stemd: --store: no SQLite store at /no/such/dir/x.db")
    status, _, err = cli(
        capsys, "workflow", "list", "--nats", "nats://127.0.0.1:1", "--request-timeout", "1"
    )
    assert status == 1
    assert one_line(err).startswith("stemd: --nats: cannot reach nats://127.0.0.1:1")
    status, _, err = cli(capsys, "workflow", "list", "--nats", "nats://x:1", "--store", "memory://")
    assert status == 1
    assert "not both" in one_line(err)


def test_usage_errors_are_one_line_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A missing argument or unknown command exits 2 with one line, not the usage text."""
    for argv in (
        ["workflow", "start"],
        ["workflow", "frobnicate"],
        ["nope"],
        ["workflow", "wait", "x", "--timeout", "soon"],
    ):
        with pytest.raises(SystemExit) as info:
            run_cli(argv)
        assert info.value.code == 2
        assert "error:" in one_line(capsys.readouterr().err)


def test_config_check_prints_the_effective_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`config check` prints the effective config with STEMD_* applied, and its workflows."""
    config = tmp_path / "stemd.toml"
    config.write_text(f'store = "sqlite:///{tmp_path}/x.db"\nconcurrency = 4\n')
    monkeypatch.setenv("STEMD_QUEUE", "from-env")
    status, out, _ = cli(capsys, "config", "check", "--config", str(config))
    assert status == 0
    assert "concurrency = 4\n" in out
    assert 'queue = "from-env"\n' in out
    assert "approvals.flow" in out
    status, out, _ = cli(capsys, "config", "check", "--config", str(config), "--json")
    data: dict[str, Any] = json.loads(out)
    assert data["config"]["queue"] == "from-env"
    assert "user.signup" in data["workflows"]
    config.write_text("concurrency = true\n")
    status, _, err = cli(capsys, "config", "check", "--config", str(config))
    assert status == 1
    assert "concurrency: expected `int`, got `bool`" in one_line(err)


def test_send_approves_one_run(capsys: pytest.CaptureFixture[str], store: str) -> None:
    """`send` straight to the store puts a message in one run's mailbox (taken by its
    wait); a keyed resend sends nothing; an unknown run is one line and exit 1."""
    start(capsys, store, "approvals.flow", "one", DRAFT)
    start(capsys, store, "approvals.flow", "two", DRAFT)
    payload = ["--payload", '{"approvedBy": "ana"}']
    argv = ["workflow", "send", "one", "approvals.manager", *payload, "--key", "k1"]
    status, out, _ = cli(capsys, *argv, "--store", store)
    assert (status, out) == (0, "sent approvals.manager to run one\n")
    status, out, _ = cli(capsys, *argv, "--store", store, "--json")
    assert (status, json.loads(out)) == (0, {"accepted": False})
    assert drive(store, "one", "completed").result == "approved-by:ana"
    status, out, _ = cli(capsys, "workflow", "get", "two", "--store", store, "--json")
    assert json.loads(out)["run"]["status"] != "completed"
    status, _, err = cli(capsys, "workflow", "send", "ghost", "t", "--store", store)
    assert status == 1
    assert one_line(err) == "stemd: no run ghost"


def test_list_and_waiting_page(capsys: pytest.CaptureFixture[str], store: str) -> None:
    """`list --limit` and `waiting --limit` print where the next page starts; `--after`
    prints that page; a bad cursor is one line and exit 1."""
    for run_id in ("pg1", "pg2", "pg3"):
        start(capsys, store, "approvals.flow", run_id, DRAFT)
    for run_id in ("pg1", "pg2", "pg3"):
        drive(store, run_id, "suspended")
    status, out, _ = cli(capsys, "workflow", "list", "--limit", "2", "--store", store)
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["pg3", "pg2"]
    assert lines[-1].startswith("more: --after ")
    cursor = lines[-1].split()[-1]
    status, out, _ = cli(
        capsys, "workflow", "list", "--limit", "2", "--after", cursor, "--store", store, "--json"
    )
    assert [r["run_id"] for r in json.loads(out)["runs"]] == ["pg1"]
    status, out, _ = cli(
        capsys,
        "workflow",
        "waiting",
        "approvals.manager",
        "--limit",
        "1",
        "--store",
        store,
        "--json",
    )
    page = json.loads(out)
    assert len(page["runs"]) == 1
    assert "next" in page
    status, _, err = cli(capsys, "workflow", "list", "--after", "nope", "--store", store)
    assert status == 1
    assert one_line(err) == "stemd: invalid cursor 'nope': give the next of a previous page"
