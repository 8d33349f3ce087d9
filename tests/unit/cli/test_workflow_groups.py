"""`stemd workflow pause|resume|cancel` over groups of runs, straight to a SQLite store (no
daemon): filters, --dry-run listings, JSON output, the single-run `cancel RUN_ID` kept,
and bad input as one line on stderr that changes nothing."""

from __future__ import annotations

import json

import pytest

from tests.unit.cli.test_workflow_store import DRAFT, cli, drive, one_line, start

pytestmark = pytest.mark.timeout(60)


def _waiting(capsys: pytest.CaptureFixture[str], store: str, *run_ids: str) -> None:
    for run_id in run_ids:
        assert start(capsys, store, "approvals.flow", run_id, DRAFT)[0] == 0
        drive(store, run_id, "suspended")


def _paused(capsys: pytest.CaptureFixture[str], store: str, run_id: str) -> bool:
    status, out, _ = cli(capsys, "workflow", "get", run_id, "--store", store, "--json")
    assert status == 0
    paused: bool = json.loads(out)["run"]["paused"]
    return paused


def test_pause_resume_and_cancel_a_topic_group(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """`pause --topic` pauses the waiting runs (a dry run first lists them and changes
    nothing); resume and cancel with filters do the same for their runs."""
    _waiting(capsys, store, "doc-1", "doc-2")
    common = ["--topic", "approvals.manager", "--store", store]
    status, out, _ = cli(capsys, "workflow", "pause", *common, "--dry-run")
    assert status == 0
    assert out.splitlines() == ["doc-1", "doc-2", "would pause 2 runs (dry run: nothing changed)"]
    assert not _paused(capsys, store, "doc-1")
    assert cli(capsys, "workflow", "pause", *common) == (0, "paused 2 runs\n", "")
    assert _paused(capsys, store, "doc-1")
    status, out, _ = cli(capsys, "workflow", "pause", *common, "--json")
    assert json.loads(out) == {"count": 0}
    status, out, _ = cli(
        capsys, "workflow", "resume", "--run-id", "doc-2", *common, "--dry-run", "--json"
    )
    assert json.loads(out) == {"count": 1, "dry_run": True, "run_ids": ["doc-2"]}
    assert cli(capsys, "workflow", "resume", "--run-id", "doc-2", *common) == (
        0,
        "resumed 1 run\n",
        "",
    )
    assert not _paused(capsys, store, "doc-2")
    status, out, _ = cli(
        capsys, "workflow", "cancel", "--workflow", "approvals.flow", "--status", "suspended",
        "--reason", "incident", "--store", store,
    )  # fmt: skip
    assert (status, out) == (0, "cancelled 2 runs\n")
    status, out, _ = cli(capsys, "workflow", "get", "doc-1", "--store", store, "--json")
    assert json.loads(out)["run"]["cancel_reason"] == "incident"


def test_cancel_of_one_run_still_works(capsys: pytest.CaptureFixture[str], store: str) -> None:
    """`stemd workflow cancel RUN_ID` cancels that run, as before."""
    _waiting(capsys, store, "doc-1")
    status, out, _ = cli(capsys, "workflow", "cancel", "doc-1", "--store", store)
    assert (status, out) == (0, "cancelled run doc-1\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["pause"],
        ["resume", "--status", "sleeping"],
        ["pause", "--created-after", "2030-01-01T00:00:00"],
        ["pause", "--topic", "bad topic"],
        ["cancel"],
        ["pause", "--topic", "approvals.manager", "--new-runs"],
        ["cancel", "doc-1", "--workflow", "approvals.flow"],
    ],
)
def test_bad_group_input_is_one_line_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], store: str, argv: list[str]
) -> None:
    """No filter, a bad filter, or RUN_ID with filters: one line on stderr, exit 2, and no
    run changed."""
    _waiting(capsys, store, "doc-1")
    status, _, err = cli(capsys, "workflow", *argv, "--store", store)
    assert status != 0
    one_line(err)
    assert not _paused(capsys, store, "doc-1")
    status, out, _ = cli(capsys, "workflow", "get", "doc-1", "--store", store, "--json")
    assert json.loads(out)["run"]["status"] == "suspended"
