"""The wire verbs of forks and schedules (issue 13) over a real nats-server: fork,
schedules, pause_schedule, resume_schedule, trigger_schedule, start with parent_run_id;
bad requests answered with a contract error that changes nothing; the CLI over --nats."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._cli.main import run_cli
from tests.helpers import wait_status

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

flow = stemd.Flow("wire.sched")


@flow.step("first")
async def first(ctx: stemd.FlowContext) -> Any:
    """Returns the params."""
    return ctx.params


@flow.step("second")
async def second(ctx: stemd.FlowContext) -> Any:
    """Returns the previous result, tagged."""
    return {"after": ctx.previous_result}


@pytest.fixture
async def app(nats: NatsServer) -> AsyncIterator[stemd.App]:
    """A daemon on the test's nats-server with a daily schedule."""
    daily = stemd.Schedule("daily", flow, "@daily", {"k": 1}, timezone="Europe/Paris")
    async with stemd.App(
        store=nats.url,
        broker=nats.url,
        workflows=[flow],
        schedules=[daily],
        options=stemd.AppOptions(nats=nats.url),
    ) as a:
        yield a


async def cli(argv: list[str]) -> int:
    """``stemd ARGV`` in a worker thread (it runs its own event loop)."""
    return await anyio.to_thread.run_sync(run_cli, argv)


async def call(conn: NatsConnection, verb: str, body: Any) -> Any:
    """Send ``body`` to the API verb ``verb``; return the decoded reply."""
    reply = await conn.request(f"stem.api.{verb}", json.dumps(body).encode(), timeout=5)
    return json.loads(reply.data)


async def test_fork_over_the_wire(app: stemd.App, conn: NatsConnection) -> None:
    """A fork request answers the new run's id; unknown run or step is not_found, a bad body
    bad_request; no run is created by a refused fork."""
    run_id = await app.start_workflow(flow, {"x": 1}, run_id="orig")
    await wait_status(app, run_id, stemd.RunStatus.COMPLETED)
    reply = await call(conn, "fork", {"run_id": "orig", "step": "second"})
    forked = reply["run_id"]
    result = await app.wait_for_completion(forked, timeout=5)
    assert result.value == {"after": {"x": 1}}
    assert (await call(conn, "fork", {"run_id": "ghost", "step": "second"}))["error"][
        "code"
    ] == "not_found"
    assert (await call(conn, "fork", {"run_id": "orig", "step": "nope"}))["error"][
        "code"
    ] == "not_found"
    assert (await call(conn, "fork", {"run_id": "orig"}))["error"]["code"] == "bad_request"
    assert len(await app.list_runs(limit=100)) == 2


async def test_schedules_over_the_wire(app: stemd.App, conn: NatsConnection) -> None:
    """A schedules request lists the schedule with its state in JSON; pause, resume and trigger
    act on it; an unknown name is not_found and a bad one bad_request."""
    [listed] = (await call(conn, "schedules", {}))["schedules"]
    assert listed["name"] == "daily"
    assert listed["workflow"] == "wire.sched"
    assert listed["timezone"] == "Europe/Paris"
    assert listed["params"] == {"k": 1}
    assert listed["next_tick"].endswith("Z")
    paused = await call(conn, "pause_schedule", {"name": "daily"})
    assert paused["schedule"]["paused"] is True
    resumed = await call(conn, "resume_schedule", {"name": "daily"})
    assert resumed["schedule"]["paused"] is False
    started = await call(conn, "trigger_schedule", {"name": "daily", "run_id": "manual-1"})
    assert started == {"run_id": "manual-1"}
    result = await app.wait_for_completion("manual-1", timeout=5)
    assert result.value == {"after": {"k": 1}}
    for verb in ("pause_schedule", "resume_schedule", "trigger_schedule"):
        assert (await call(conn, verb, {"name": "nope"}))["error"]["code"] == "not_found"
        assert (await call(conn, verb, {"name": "bad name"}))["error"]["code"] == "bad_request"


async def test_start_with_a_parent_over_the_wire(app: stemd.App, conn: NatsConnection) -> None:
    """A start with parent_run_id records the parent; an unknown parent is not_found and
    starts nothing."""
    await app.start_workflow(flow, {}, run_id="mum")
    reply = await call(
        conn, "start", {"workflow": "wire.sched", "run_id": "kid", "parent_run_id": "mum"}
    )
    assert reply == {"run_id": "kid", "created": True}
    state = await app.get_run("kid")
    assert state is not None
    assert state.parent_run_id == "mum"
    body = {"workflow": "wire.sched", "run_id": "orphan", "parent_run_id": "ghost"}
    assert (await call(conn, "start", body))["error"]["code"] == "not_found"
    assert await app.get_run("orphan") is None


async def test_the_cli_over_nats(
    app: stemd.App, nats: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stemd schedule list|trigger` and `stemd workflow fork` work through the daemon."""
    assert await cli(["schedule", "list", "--nats", nats.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schedules"][0]["name"] == "daily"
    assert await cli(["schedule", "trigger", "daily", "--run-id", "t-1", "--nats", nats.url]) == 0
    await wait_status(app, "t-1", stemd.RunStatus.COMPLETED)
    capsys.readouterr()
    assert (
        await cli(["workflow", "fork", "t-1", "--step", "second", "--nats", nats.url, "--json"])
        == 0
    )
    forked = json.loads(capsys.readouterr().out)["run_id"]
    assert (await app.wait_for_completion(forked, timeout=5)).value == {"after": {"k": 1}}
    assert await cli(["schedule", "pause", "nope", "--nats", nats.url]) != 0
    assert "no schedule 'nope'" in capsys.readouterr().err
