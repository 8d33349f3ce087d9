"""The workflows daemons serve, over a real nats-server: the wire's ``types`` verb, its bad
requests, ``stemd workflow types`` through a daemon and straight to the KV store, and
``start`` of a workflow the daemon does not serve."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._cli.main import run_cli

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.timeout(90),
    pytest.mark.usefixtures("restore_logging"),
]

review = stemd.Flow("registry.review")


@review.step("draft")
async def draft(ctx: stemd.FlowContext) -> Any:
    """Returns the params."""
    return ctx.params


@review.step("approve")
async def approve(ctx: stemd.FlowContext) -> Any:
    """Returns the draft."""
    return ctx.previous_result


@stemd.script("registry.script")
async def script(ctx: stemd.ScriptContext) -> str:
    """Returns ``"done"``."""
    return "done"


elsewhere = stemd.Flow("registry.elsewhere")


@elsewhere.step("only")
async def only(ctx: stemd.FlowContext) -> int:
    """Returns 1."""
    return 1


@pytest.fixture
async def app(nats: NatsServer) -> AsyncIterator[stemd.App]:
    """A daemon on the test's nats-server (KV store, JetStream broker, wire protocol)
    serving a flow and a script."""
    async with stemd.App(
        store=nats.url,
        broker=nats.url,
        workflows=[review, script],
        options=stemd.AppOptions(nats=nats.url),
    ) as a:
        yield a


async def call(conn: NatsConnection, verb: str, body: Any) -> Any:
    """Send ``body`` to the API verb ``verb``; return the decoded reply."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = await conn.request(f"stem.api.{verb}", data, timeout=5)
    return json.loads(reply.data)


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``stemd ARGV`` in a worker thread (it runs its own event loop)."""
    capsys.readouterr()
    status = await anyio.to_thread.run_sync(run_cli, list(argv))
    out, err = capsys.readouterr()
    return status, out, err


async def test_types_answers_the_daemons_workflows_and_what_its_store_records(
    app: stemd.App, conn: NatsConnection, nats: NatsServer
) -> None:
    """``types`` answers, by name, the workflows of the daemon and of every other daemon
    that registered in its store: name, kind, version, a flow's steps, when registered."""
    async with stemd.App(store=nats.url, broker=nats.url, workflows=[elsewhere]):
        pass
    reply = await call(conn, "types", {})
    workflows = reply["workflows"]
    assert [w["name"] for w in workflows] == [
        "registry.elsewhere",
        "registry.review",
        "registry.script",
    ]
    assert {k: v for k, v in workflows[1].items() if k != "registered_at"} == {
        "name": "registry.review",
        "kind": "flow",
        "version": None,
        "steps": ["draft", "approve"],
    }
    assert {k: v for k, v in workflows[2].items() if k != "registered_at"} == {
        "name": "registry.script",
        "kind": "script",
        "version": None,
    }
    for w in workflows:
        assert datetime.fromisoformat(w["registered_at"]).tzinfo is not None
    assert await call(conn, "types", b"") == reply


@pytest.mark.parametrize(
    "body",
    [b'{"workflow": "x"}', b"[]", b"null", b'"types"', b"{", b"\xff\xfe", b"5"],
)
async def test_bad_types_requests_are_bad_request(
    app: stemd.App, conn: NatsConnection, body: bytes
) -> None:
    """A ``types`` request that is not an empty object gets ``bad_request``."""
    reply = await call(conn, "types", body)
    assert set(reply) == {"error"}
    assert reply["error"]["code"] == "bad_request"
    assert reply["error"]["message"]


async def test_cli_types_through_the_daemon_and_straight_to_the_kv_store(
    capsys: pytest.CaptureFixture[str], app: stemd.App, nats: NatsServer
) -> None:
    """`stemd workflow types` lists the same workflows over --nats and over --store
    nats://, as a table or as JSON."""
    status, out, _ = await cli(capsys, "workflow", "types", "--nats", nats.url, "--json")
    assert status == 0
    over_nats = json.loads(out)["workflows"]
    assert [w["name"] for w in over_nats] == ["registry.review", "registry.script"]
    status, out, _ = await cli(capsys, "workflow", "types", "--store", nats.url, "--json")
    assert (status, json.loads(out)["workflows"]) == (0, over_nats)
    status, out, _ = await cli(capsys, "workflow", "types", "--nats", nats.url)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "VERSION", "REGISTERED", "STEPS"]
    assert lines[1].split()[:3] == ["registry.review", "flow", "-"]
    assert lines[1].endswith("  draft, approve")


async def test_start_of_a_workflow_the_daemon_does_not_serve_is_refused(
    capsys: pytest.CaptureFixture[str], app: stemd.App, nats: NatsServer
) -> None:
    """Over --nats the daemon refuses a name it does not serve (unknown_workflow) and
    nothing is written; --force is refused there; over --store nats:// the registry
    decides, and --force starts it."""
    n = ["--nats", nats.url]
    status, _, err = await cli(capsys, "workflow", "start", "registry.reviw", "--run-id", "x", *n)
    assert (status, err) == (1, "stemd: unknown workflow 'registry.reviw'\n")
    status, _, err = await cli(
        capsys, "workflow", "start", "registry.review", "--force", "--run-id", "x", *n
    )
    assert status == 1
    assert err.startswith("stemd: --force works with --store only")
    assert await app.list_runs() == []
    s = ["--store", nats.url]
    status, _, err = await cli(capsys, "workflow", "start", "registry.reviw", "--run-id", "x", *s)
    assert status == 1
    assert "did you mean 'registry.review'?" in err
    assert await app.list_runs() == []
    status, _, _ = await cli(
        capsys, "workflow", "start", "registry.reviw", "--force", "--run-id", "x", *s
    )
    assert status == 0
    assert [r.workflow for r in await app.list_runs()] == ["registry.reviw"]
