"""`stemd workflow … --nats URL`: the CLI through a daemon's API on a real nats-server."""

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING

import anyio
import pytest
from stemd_examples import approvals, fanout, flaky, signup, square

import stemd
from stemd._cli.main import run_cli
from tests.integration.daemon_proc import DaemonProcess, NotifyListener, write_config

if TYPE_CHECKING:
    from pathlib import Path

    from stemd.testing._nats import NatsServer

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(90),
    pytest.mark.usefixtures("restore_logging"),
]

EXAMPLES = [approvals, fanout, flaky, signup, square]
DRAFT = json.dumps({"draft": {"documentId": "doc-7"}})


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``stemd ARGV`` in a worker thread (it runs its own event loop)."""
    capsys.readouterr()
    status = await anyio.to_thread.run_sync(run_cli, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def test_every_command_through_the_api(
    capsys: pytest.CaptureFixture[str], nats: NatsServer, tmp_path: Path
) -> None:
    """start, get, list, waiting, emit, wait, rewind and cancel work over --nats."""
    n = ["--nats", nats.url]
    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    async with stemd.App(store=store, workflows=EXAMPLES, options=stemd.AppOptions(nats=nats.url)):
        status, out, _ = await cli(
            capsys, "workflow", "start", "approvals.flow", "--params", DRAFT, "--run-id", "d7", *n
        )
        assert (status, out) == (0, "started approvals.flow run d7\n")
        status, out, _ = await cli(
            capsys, "workflow", "start", "approvals.flow", "--run-id", "d7", "--json", *n
        )
        assert json.loads(out) == {"run_id": "d7", "created": False}
        with anyio.fail_after(10):
            while True:
                status, out, _ = await cli(
                    capsys, "workflow", "waiting", "approvals.manager", "--json", *n
                )
                if [r["run_id"] for r in json.loads(out)["runs"]] == ["d7"]:
                    break
        status, out, _ = await cli(capsys, "workflow", "get", "d7", *n)
        assert "timeline (1 checkpoint):" in out
        status, out, _ = await cli(capsys, "workflow", "list", "--status", "suspended", *n)
        assert out.splitlines()[1].split()[:3] == ["d7", "approvals.flow", "suspended"]
        status, out, _ = await cli(
            capsys,
            "workflow",
            "emit",
            "approvals.manager",
            "--payload",
            '{"approvedBy": "ana"}',
            "--json",
            *n,
        )
        assert json.loads(out) == {"resumed": 1}
        status, out, _ = await cli(capsys, "workflow", "wait", "d7", "--timeout", "10", *n)
        assert status == 0
        assert 'result    "approved-by:ana"' in out
        status, _, err = await cli(capsys, "workflow", "rewind", "d7", "--step", "nope", *n)
        assert status == 1
        assert "has no step 'nope'" in err
        status, out, _ = await cli(capsys, "workflow", "rewind", "d7", "--step", "finalize", *n)
        assert status == 0
        status, _, err = await cli(capsys, "workflow", "start", "no.such", *n)
        assert (status, err) == (1, "stemd: unknown workflow 'no.such'\n")
        status, _, err = await cli(capsys, "workflow", "get", "ghost", *n)
        assert (status, err) == (1, "stemd: no run ghost\n")
        await cli(
            capsys, "workflow", "start", "approvals.flow", "--params", DRAFT, "--run-id", "c1", *n
        )
        status, out, _ = await cli(capsys, "workflow", "cancel", "c1", "--json", *n)
        assert (status, json.loads(out)) == (0, {"cancelled": True})
        assert (await cli(capsys, "workflow", "wait", "c1", *n))[0] == 4


async def test_no_daemon_on_the_subjects_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], nats: NatsServer
) -> None:
    """A NATS where no daemon serves the API: exit 1 and one line saying so."""
    status, _, err = await cli(
        capsys, "workflow", "list", "--nats", nats.url, "--request-timeout", "1"
    )
    assert status == 1
    assert err.count("\n") == 1
    assert "no stemd daemon answered on stem.api.list" in err


async def test_stemd_run_serves_the_api_on_its_nats(
    capsys: pytest.CaptureFixture[str], nats: NatsServer, tmp_path: Path
) -> None:
    """`stemd run` with `nats` in its config answers the CLI's --nats requests."""
    config = write_config(
        tmp_path / "stemd.toml",
        store=f"sqlite:///{tmp_path / 'stemd.db'}",
        nats=nats.url,
        log_format="json",
    )
    notify = NotifyListener(tmp_path)
    daemon = DaemonProcess(tmp_path, config, notify)
    try:
        await anyio.to_thread.run_sync(notify.wait_for, "READY=1")
        n = ["--nats", nats.url]
        status, out, _ = await cli(
            capsys, "workflow", "start", "examples.flaky", "--run-id", "f1", *n
        )
        assert status == 0, out
        status, out, _ = await cli(
            capsys, "workflow", "wait", "f1", "--timeout", "20", "--json", *n
        )
        assert status == 0
        assert json.loads(out)["run"]["result"] == "fetched after 3 attempts"
        daemon.signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(daemon.wait) == 0
    finally:
        daemon.kill()
        notify.close()


async def test_send_through_the_api(
    capsys: pytest.CaptureFixture[str], nats: NatsServer, tmp_path: Path
) -> None:
    """`workflow send` over --nats approves one document of two; a keyed resend sends
    nothing; an unknown or ended run is one line on stderr and exit 1."""
    n = ["--nats", nats.url]
    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    async with stemd.App(
        store=store, workflows=EXAMPLES, options=stemd.AppOptions(nats=nats.url)
    ) as app:
        for run_id in ("s1", "s2"):
            await cli(
                capsys,
                "workflow",
                "start",
                "approvals.flow",
                "--params",
                DRAFT,
                "--run-id",
                run_id,
                *n,
            )
        payload = ["--payload", '{"approvedBy": "ana"}']
        status, out, _ = await cli(
            capsys, "workflow", "send", "s1", "approvals.manager", *payload, "--key", "k", *n
        )
        assert (status, out) == (0, "sent approvals.manager to run s1\n")
        status, out, _ = await cli(
            capsys, "workflow", "send", "s1", "approvals.manager", "--key", "k", "--json", *n
        )
        assert (status, json.loads(out)) == (0, {"accepted": False})
        status, out, _ = await cli(capsys, "workflow", "wait", "s1", "--timeout", "10", *n)
        assert status == 0
        assert 'result    "approved-by:ana"' in out
        assert (await app.get_run("s2")).status is not stemd.RunStatus.COMPLETED  # type: ignore[union-attr]
        status, _, err = await cli(capsys, "workflow", "send", "ghost", "approvals.manager", *n)
        assert (status, err) == (1, "stemd: no run ghost\n")
        status, _, err = await cli(capsys, "workflow", "send", "s1", "approvals.manager", *n)
        assert status == 1
        assert err.count("\n") == 1
        assert "has ended (completed)" in err
