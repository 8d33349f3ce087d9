"""The group verbs of the wire protocol (`pause`, `resume`, `cancel_many`) served by a
daemon over a real nats-server, and the CLI's group commands through it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

import stemd
from stemd._cli.client import NatsClient
from tests.helpers import wait_status
from tests.integration.test_nats_api import call, flow

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

TOPIC = "api.approve"


@pytest.fixture
async def app(nats: NatsServer) -> AsyncIterator[stemd.App]:
    """A daemon on the test's nats-server: KV store, JetStream broker, wire protocol."""
    async with stemd.App(
        store=nats.url, broker=nats.url, workflows=[flow], options=stemd.AppOptions(nats=nats.url)
    ) as a:
        yield a


async def _waiting(app: stemd.App, conn: NatsConnection, *run_ids: str) -> None:
    for run_id in run_ids:
        await call(conn, "start", {"workflow": "api.flow", "params": {}, "run_id": run_id})
    for run_id in run_ids:
        await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)


async def test_pause_resume_and_cancel_many_reply_with_counts(
    app: stemd.App, conn: NatsConnection
) -> None:
    """pause/resume/cancel_many take the filters as fields and reply {"count"}; a dry run
    also lists the run ids and changes nothing; an event emitted while paused is held."""
    await _waiting(app, conn, "a", "b")
    assert await call(conn, "pause", {"topic": TOPIC, "dry_run": True}) == {
        "count": 2,
        "run_ids": ["a", "b"],
    }
    assert await call(conn, "pause", {"topic": TOPIC}) == {"count": 2}
    assert (await call(conn, "get", {"run_id": "a"}))["run"]["paused"] is True
    assert await call(conn, "emit", {"topic": TOPIC, "payload": "ok"}) == {"resumed": 0}
    assert (await call(conn, "get", {"run_id": "a"}))["run"]["status"] == "suspended"
    assert await call(conn, "resume", {"run_ids": ["a"]}) == {"count": 1}
    result = await app.wait_for_completion("a", timeout=20)
    assert result.value == {"params": {}, "decision": "ok"}
    body = {"workflow": "api.flow", "status": "suspended", "reason": "incident"}
    assert await call(conn, "cancel_many", body) == {"count": 1}
    state = await app.get_run("b")
    assert state is not None
    assert state.status is stemd.RunStatus.CANCELLED
    assert state.cancel_reason == "incident"


@pytest.mark.parametrize(
    ("verb", "body"),
    [
        ("pause", {}),
        ("pause", {"topic": "bad topic"}),
        ("resume", {"status": "sleeping"}),
        ("pause", {"created_after": "2030-01-01T00:00:00"}),
        ("cancel_many", {"workflow": "api.flow", "reason": ""}),
        ("pause", {"workflow": "api.flow", "colour": "red"}),
        ("pause", {"run_ids": "a"}),
        ("pause", {"topic": TOPIC, "new_runs": True}),
        ("cancel_many", {"workflow": "api.flow", "new_runs": True}),
    ],
)
async def test_bad_group_requests_are_refused_and_change_nothing(
    app: stemd.App, conn: NatsConnection, verb: str, body: dict[str, Any]
) -> None:
    """A group request without a filter, with a malformed one or an unknown field gets
    bad_request, and no run changes."""
    await _waiting(app, conn, "a")
    reply = await call(conn, verb, body)
    assert reply["error"]["code"] == "bad_request"
    state = await app.get_run("a")
    assert state is not None
    assert not state.paused
    assert state.status is stemd.RunStatus.SUSPENDED


async def test_the_cli_client_operates_groups_through_the_daemon(
    app: stemd.App, conn: NatsConnection, nats: NatsServer
) -> None:
    """The CLI's NATS client sends the group verbs and returns counts and dry-run ids."""
    await _waiting(app, conn, "a", "b")
    client = NatsClient(conn, nats.url)
    assert await client.group("pause", {"run_ids": ["a"]}, "", True) == (1, ["a"])
    assert await client.group("pause", {"workflow": "api.flow"}, "", False) == (2, None)
    assert await client.group("resume", {"topic": TOPIC}, "", False) == (2, None)
    count, _ = await client.group("cancel", {"run_ids": ["b"]}, "stop", False)
    assert count == 1
    state = await app.get_run("b")
    assert state is not None
    assert state.cancel_reason == "stop"


async def test_pause_with_new_runs_pauses_the_workflow_s_next_runs(
    app: stemd.App, conn: NatsConnection
) -> None:
    """Pause with workflow and new_runs makes the next runs start paused; resume with
    new_runs lets them go."""
    body = {"workflow": "api.flow", "new_runs": True}
    assert await call(conn, "pause", body) == {"count": 0}
    await call(conn, "start", {"workflow": "api.flow", "params": {}, "run_id": "later"})
    state = await app.get_run("later")
    assert state is not None
    assert state.paused
    assert await call(conn, "resume", body) == {"count": 1}
    await wait_status(app, "later", stemd.RunStatus.SUSPENDED)
