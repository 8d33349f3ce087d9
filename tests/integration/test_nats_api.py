"""The wire protocol's request/reply verbs, served by a daemon over a real nats-server:
every verb, and every kind of bad request answered with a contract error that changes
nothing."""

from __future__ import annotations

import json
import random
import re
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from tests.helpers import RUN_STATE_CONTRACT_FIELDS, wait_status

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
CODES = {"bad_request", "unknown_workflow", "not_found", "internal"}

flow = stemd.Flow("api.flow")


@flow.step("prepare")
async def prepare(ctx: stemd.FlowContext) -> Any:
    """Returns the params."""
    return ctx.params


@flow.step("approve")
async def approve(ctx: stemd.FlowContext) -> Any:
    """Waits for the approval event; returns it with the params."""
    decision = await ctx.wait_for_event("api.approve", data={"about": ctx.previous_result})
    return {"params": ctx.previous_result, "decision": decision}


@pytest.fixture
async def app(nats: NatsServer) -> AsyncIterator[stemd.App]:
    """A daemon on the test's nats-server: KV store, JetStream broker, wire protocol."""
    async with stemd.App(
        store=nats.url, broker=nats.url, workflows=[flow], options=stemd.AppOptions(nats=nats.url)
    ) as a:
        yield a


async def call(conn: NatsConnection, verb: str, body: Any) -> Any:
    """Send ``body`` to the API verb ``verb``; return the decoded reply."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = await conn.request(f"stem.api.{verb}", data, timeout=5)
    return json.loads(reply.data)


async def run_count(app: stemd.App) -> int:
    """How many runs the store holds."""
    return len(await app.list_runs(limit=10_000))


async def test_start_is_idempotent_and_get_returns_the_contract_fields(
    app: stemd.App, conn: NatsConnection
) -> None:
    """Start creates once per run id; get returns the contract's RunState JSON."""
    body = {
        "workflow": "api.flow",
        "params": {"doc": 42},
        "run_id": "run-1",
        "policy": {"max_run_duration": 3600},
    }
    assert await call(conn, "start", body) == {"run_id": "run-1", "created": True}
    assert await call(conn, "start", body) == {"run_id": "run-1", "created": False}
    await wait_status(app, "run-1", stemd.RunStatus.SUSPENDED)
    run = (await call(conn, "get", {"run_id": "run-1"}))["run"]
    assert set(run) >= RUN_STATE_CONTRACT_FIELDS
    assert run["run_id"] == "run-1"
    assert run["workflow"] == "api.flow"
    assert run["status"] == "suspended"
    assert run["params"] == {"doc": 42}
    assert run["checkpoints"] == {"prepare": {"doc": 42}}
    assert run["wait_topic"] == "api.approve"
    assert run["wait_data"] == {"about": {"doc": 42}}
    assert run["policy"] == {"max_run_duration": 3600.0}
    assert run["attempts"] == 1
    assert RFC3339.match(run["created_at"])
    assert RFC3339.match(run["updated_at"])
    (entry,) = run["timeline"]
    assert (entry["name"], entry["kind"], entry["step"]) == ("prepare", "step", "prepare")
    assert RFC3339.match(entry["at"])
    assert entry["duration"] >= 0


async def test_start_without_run_id_generates_one(app: stemd.App, conn: NatsConnection) -> None:
    """Start without run_id makes a new run each time."""
    first = await call(conn, "start", {"workflow": "api.flow"})
    second = await call(conn, "start", {"workflow": "api.flow"})
    assert first["created"]
    assert second["created"]
    assert first["run_id"] != second["run_id"]


async def test_waiting_emit_and_completion(app: stemd.App, conn: NatsConnection) -> None:
    """Waiting lists the waiter; emit resumes it and the run completes with the payload."""
    await call(conn, "start", {"workflow": "api.flow", "params": 1, "run_id": "w1"})
    await wait_status(app, "w1", stemd.RunStatus.SUSPENDED)
    waiting = await call(conn, "waiting", {"topic": "api.approve"})
    assert [r["run_id"] for r in waiting["runs"]] == ["w1"]
    assert await call(conn, "emit", {"topic": "api.approve", "payload": {"by": "ana"}}) == {
        "resumed": 1
    }
    assert await call(conn, "emit", {"topic": "api.approve"}) == {"resumed": 0}
    await wait_status(app, "w1", stemd.RunStatus.COMPLETED)
    run = (await call(conn, "get", {"run_id": "w1"}))["run"]
    assert run["status"] == "completed"
    assert run["result"] == {"params": 1, "decision": {"by": "ana"}}
    assert RFC3339.match(run["finished_at"])


async def test_send_resumes_only_its_run(app: stemd.App, conn: NatsConnection) -> None:
    """Send resumes the run it names and no other; a keyed resend is accepted false; an
    unknown run is not_found, an ended one bad_request."""
    for run_id in ("s1", "s2"):
        await call(conn, "start", {"workflow": "api.flow", "params": 1, "run_id": run_id})
    for run_id in ("s1", "s2"):
        await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)
    body = {"run_id": "s1", "topic": "api.approve", "payload": {"by": "bo"}, "key": "k1"}
    assert await call(conn, "send", body) == {"accepted": True}
    assert await call(conn, "send", body) == {"accepted": False}
    await wait_status(app, "s1", stemd.RunStatus.COMPLETED)
    run = (await call(conn, "get", {"run_id": "s1"}))["run"]
    assert run["result"] == {"params": 1, "decision": {"by": "bo"}}
    waiting = await call(conn, "waiting", {"topic": "api.approve"})
    assert [r["run_id"] for r in waiting["runs"]] == ["s2"]
    ghost = await call(conn, "send", {"run_id": "ghost", "topic": "api.approve"})
    assert ghost["error"]["code"] == "not_found"
    ended = await call(conn, "send", {"run_id": "s1", "topic": "api.approve"})
    assert ended["error"]["code"] == "bad_request"
    assert "has ended" in ended["error"]["message"]


async def test_list_filters_newest_first(app: stemd.App, conn: NatsConnection) -> None:
    """List filters by workflow and status, newest first, at most limit."""
    for i in range(3):
        await call(conn, "start", {"workflow": "api.flow", "run_id": f"l{i}"})
    for i in range(3):
        await wait_status(app, f"l{i}", stemd.RunStatus.SUSPENDED)
    runs = (await call(conn, "list", {}))["runs"]
    assert [r["run_id"] for r in runs] == ["l2", "l1", "l0"]
    limited = await call(conn, "list", {"workflow": "api.flow", "status": "suspended", "limit": 2})
    assert [r["run_id"] for r in limited["runs"]] == ["l2", "l1"]
    assert await call(conn, "list", {"status": "completed"}) == {"runs": []}
    assert await call(conn, "list", {"workflow": "other"}) == {"runs": []}


async def test_list_and_waiting_page_with_a_cursor(app: stemd.App, conn: NatsConnection) -> None:
    """List and waiting answer a page and, when there are more runs, the cursor of the
    next one (next); after= gives that page; the last page has no next."""
    for i in range(3):
        await call(conn, "start", {"workflow": "api.flow", "run_id": f"p{i}"})
    for i in range(3):
        await wait_status(app, f"p{i}", stemd.RunStatus.SUSPENDED)
    first = await call(conn, "list", {"limit": 2})
    assert [r["run_id"] for r in first["runs"]] == ["p2", "p1"]
    rest = await call(conn, "list", {"limit": 2, "after": first["next"]})
    assert ([r["run_id"] for r in rest["runs"]], "next" in rest) == (["p0"], False)
    waiting = await call(conn, "waiting", {"topic": "api.approve", "limit": 2})
    assert [r["run_id"] for r in waiting["runs"]] == ["p0", "p1"]
    more = await call(conn, "waiting", {"topic": "api.approve", "after": waiting["next"]})
    assert more == {"runs": more["runs"]}
    assert [r["run_id"] for r in more["runs"]] == ["p2"]


async def test_cancel(app: stemd.App, conn: NatsConnection) -> None:
    """Cancel ends a live run once; cancelling it again or an unknown run says false."""
    await call(conn, "start", {"workflow": "api.flow", "run_id": "c1"})
    await wait_status(app, "c1", stemd.RunStatus.SUSPENDED)
    assert await call(conn, "cancel", {"run_id": "c1", "reason": "operator"}) == {"cancelled": True}
    assert await call(conn, "cancel", {"run_id": "c1"}) == {"cancelled": False}
    assert await call(conn, "cancel", {"run_id": "nobody"}) == {"cancelled": False}
    run = (await call(conn, "get", {"run_id": "c1"}))["run"]
    assert run["status"] == "cancelled"
    assert run["cancel_reason"] == "operator"


async def test_rewind(app: stemd.App, conn: NatsConnection) -> None:
    """Rewind re-runs a step; an unknown run says false, an unknown step is not_found."""
    await call(conn, "start", {"workflow": "api.flow", "params": "p", "run_id": "rw"})
    await wait_status(app, "rw", stemd.RunStatus.SUSPENDED)
    assert await call(conn, "rewind", {"run_id": "rw", "step": "prepare"}) == {"rewound": True}
    assert await call(conn, "rewind", {"run_id": "ghost", "step": "prepare"}) == {"rewound": False}
    error = await call(conn, "rewind", {"run_id": "rw", "step": "nope"})
    assert error["error"]["code"] == "not_found"
    state = await wait_status(app, "rw", stemd.RunStatus.SUSPENDED)
    assert state.attempts == 2


BAD_REQUESTS: list[tuple[str, bytes, str]] = [
    ("start", b'{"workflow": "nope"}', "unknown_workflow"),
    ("get", b'{"run_id": "ghost"}', "not_found"),
    ("start", b"{", "bad_request"),
    ("start", b"\xff\xfe", "bad_request"),
    ("start", b'{"workflow": "api.fl\xc5E"}', "bad_request"),  # a string not UTF-8
    ("start", b'{"workflow": "api.flow", "params": {"a": "\xc5E"}}', "bad_request"),
    ("emit", b'{"topic": "api.approve", "payload": ["\xff"]}', "bad_request"),
    ("start", b"", "bad_request"),
    ("start", b"[]", "bad_request"),
    ("start", b"null", "bad_request"),
    ("start", b'"api.flow"', "bad_request"),
    ("start", b'{"workflow": 5}', "bad_request"),
    ("start", b'{"workflow": ""}', "bad_request"),
    ("start", b'{"workflow": "api.flow", "extra": 1}', "bad_request"),
    ("start", b'{"workflow": "api.flow", "run_id": "has space"}', "bad_request"),
    ("start", b'{"workflow": "api.flow", "run_id": "a.b"}', "bad_request"),
    ("start", b'{"workflow": "api.flow", "run_id": "' + b"x" * 129 + b'"}', "bad_request"),
    ("start", b'{"workflow": "api.flow", "run_id": 7}', "bad_request"),
    ("start", b'{"workflow": "api.flow", "policy": {"max_run_duration": -1}}', "bad_request"),
    ("start", b'{"workflow": "api.flow", "policy": {"frob": 1}}', "bad_request"),
    ("start", b'{"workflow": "api.flow", "policy": 3}', "bad_request"),
    ("get", b"{}", "bad_request"),
    ("get", b'{"run_id": ""}', "bad_request"),
    ("get", b'{"run_id": "../etc"}', "bad_request"),
    ("get", b'{"run_id": ["r"]}', "bad_request"),
    ("list", b'{"limit": 0}', "bad_request"),
    ("list", b'{"limit": -5}', "bad_request"),
    ("list", b'{"limit": "10"}', "bad_request"),
    ("list", b'{"limit": 1e300}', "bad_request"),
    ("list", b'{"status": "DONE"}', "bad_request"),
    ("list", b'{"status": "Completed"}', "bad_request"),
    ("emit", b"{}", "bad_request"),
    ("emit", b'{"topic": "a..b"}', "bad_request"),
    ("emit", b'{"topic": "orders.*"}', "bad_request"),
    ("emit", b'{"topic": ">"}', "bad_request"),
    ("emit", b'{"topic": "' + b"t" * 300 + b'"}', "bad_request"),
    ("emit", b'{"topic": "api.approve", "payload": 1, "x": 2}', "bad_request"),
    ("send", b"{}", "bad_request"),
    ("send", b'{"run_id": "r1"}', "bad_request"),
    ("send", b'{"topic": "api.approve"}', "bad_request"),
    ("send", b'{"run_id": "a b", "topic": "api.approve"}', "bad_request"),
    ("send", b'{"run_id": "r1", "topic": "a..b"}', "bad_request"),
    ("send", b'{"run_id": "r1", "topic": "api.approve", "key": ""}', "bad_request"),
    ("send", b'{"run_id": "r1", "topic": "api.approve", "key": 5}', "bad_request"),
    ("send", b'{"run_id": "r1", "topic": "api.approve", "frob": 5}', "bad_request"),
    ("send", b'{"run_id": "ghost", "topic": "api.approve"}', "not_found"),
    ("emit", b'{"topic": "api.approve", "retain": -1}', "bad_request"),
    ("emit", b'{"topic": "api.approve", "retain": "1h"}', "bad_request"),
    ("list", b'{"after": "x"}', "bad_request"),
    ("list", b'{"after": 5}', "bad_request"),
    ("waiting", b'{"topic": "api.approve", "after": "-1"}', "bad_request"),
    ("waiting", b'{"topic": "api.approve", "limit": 0}', "bad_request"),
    ("waiting", b'{"topic": ""}', "bad_request"),
    ("waiting", b'{"topic": 1}', "bad_request"),
    ("cancel", b'{"reason": "x"}', "bad_request"),
    ("cancel", b'{"run_id": "r", "reason": 5}', "bad_request"),
    ("rewind", b'{"run_id": "r"}', "bad_request"),
    ("rewind", b'{"run_id": "r", "step": ""}', "bad_request"),
    ("frobnicate", b"{}", "bad_request"),
    ("start.extra", b'{"workflow": "api.flow"}', "bad_request"),
]


@pytest.mark.parametrize(("verb", "body", "code"), BAD_REQUESTS)
async def test_bad_requests_get_a_contract_error_and_change_nothing(
    app: stemd.App, conn: NatsConnection, verb: str, body: bytes, code: str
) -> None:
    """Every kind of bad request gets its contract error code and writes nothing."""
    before = await run_count(app)
    reply = await call(conn, verb, body)
    assert set(reply) == {"error"}
    assert reply["error"]["code"] == code
    assert isinstance(reply["error"]["message"], str)
    assert reply["error"]["message"]
    assert await run_count(app) == before


async def test_oversized_params_are_refused_whole(app: stemd.App, conn: NatsConnection) -> None:
    """Params too large to store give bad_request and leave no run behind."""
    body = json.dumps({"workflow": "api.flow", "params": "x" * 1_048_000, "run_id": "big"})
    reply = await call(conn, "start", body.encode())
    assert reply["error"]["code"] == "bad_request"
    assert await app.get_run("big") is None
    assert await run_count(app) == 0


async def test_garbage_never_stops_the_responder(app: stemd.App, conn: NatsConnection) -> None:
    """Hundreds of random requests get well-formed replies; the daemon serves on after."""
    rng = random.Random(1234)
    atoms: list[Any] = [None, True, 0, -1, 2**70, 1.5, "", "x", "api.flow", "a b", [], {}, [1]]
    keys = ["workflow", "params", "run_id", "policy", "topic", "payload", "limit", "status", "key"]
    verbs = ["start", "get", "list", "emit", "send", "waiting", "cancel", "rewind", "nope"]
    for _ in range(300):
        verb = rng.choice(verbs)
        kind = rng.random()
        if kind < 0.3:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        elif kind < 0.5:
            data = json.dumps(rng.choice(atoms)).encode()
        else:
            obj = {rng.choice(keys): rng.choice(atoms) for _ in range(rng.randrange(4))}
            data = json.dumps(obj).encode()
        reply = await call(conn, verb, data)
        if "error" in reply:
            assert reply["error"]["code"] in CODES - {"internal"}, (verb, data, reply)
    await call(conn, "start", {"workflow": "api.flow", "run_id": "after"})
    await wait_status(app, "after", stemd.RunStatus.SUSPENDED)


async def test_a_request_without_reply_subject_is_ignored(
    app: stemd.App, conn: NatsConnection
) -> None:
    """A publish to an API subject with no reply inbox does nothing and breaks nothing."""
    await conn.publish("stem.api.start", b'{"workflow": "api.flow", "run_id": "noreply"}')
    await conn.flush()
    assert (await call(conn, "get", {"run_id": "ghost"}))["error"]["code"] == "not_found"
    assert await app.get_run("noreply") is None


async def test_two_responders_answer_each_request_once(
    nats: NatsServer, app: stemd.App, conn: NatsConnection
) -> None:
    """Two daemons share the API in a queue group: every request gets one reply."""
    async with stemd.App(
        store=nats.url, broker=nats.url, workflows=[flow], options=stemd.AppOptions(nats=nats.url)
    ):
        inbox = conn.new_inbox()
        sub = await conn.subscribe(inbox)
        for _ in range(20):
            await conn.publish("stem.api.get", b'{"run_id": "ghost"}', reply=inbox)
        replies = 0
        with anyio.move_on_after(1):
            async for _ in sub.messages:
                replies += 1
        await sub.unsubscribe()
    assert replies == 20


async def test_a_listing_too_large_for_nats_comes_in_smaller_pages(
    app: stemd.App, conn: NatsConnection
) -> None:
    """A listing that would not fit in one NATS message answers fewer runs and `next`."""
    for i in range(8):
        await app.start_workflow("api.flow", params="p" * 150_000, run_id=f"big{i}")
    for i in range(8):
        await wait_status(app, f"big{i}", stemd.RunStatus.SUSPENDED)
    reply = await call(conn, "list", {})
    assert "error" not in reply, reply
    assert 0 < len(reply["runs"]) < 8
    seen = [r["run_id"] for r in reply["runs"]]
    while "next" in reply:
        reply = await call(conn, "list", {"after": reply["next"]})
        seen += [r["run_id"] for r in reply["runs"]]
    assert sorted(seen) == [f"big{i}" for i in range(8)]
    assert len((await call(conn, "list", {"limit": 2}))["runs"]) == 2


async def test_deployments_with_their_own_prefix_share_one_nats(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """Two deployments on one server, each with its prefix, bucket, streams: apart."""

    def deployment(name: str) -> stemd.App:
        return stemd.App(
            store=f"{nats.url}?bucket={name}",
            broker=f"{nats.url}?prefix={name}",
            workflows=[flow],
            options=stemd.AppOptions(nats=nats.url, prefix=name),
        )

    async with deployment("alpha") as alpha, deployment("beta") as beta:
        for name in ("alpha", "beta"):
            reply = await conn.request(
                f"{name}.api.start",
                json.dumps({"workflow": "api.flow", "run_id": f"{name}-1"}).encode(),
            )
            assert json.loads(reply.data) == {"run_id": f"{name}-1", "created": True}
            await conn.js_publish(
                f"{name}.submit.api.flow", b"1", headers={"Nats-Msg-Id": f"{name}-2"}
            )
        for app, name in ((alpha, "alpha"), (beta, "beta")):
            for n in (1, 2):
                await wait_status(app, f"{name}-{n}", stemd.RunStatus.SUSPENDED)
            assert sorted(r.run_id for r in await app.list_runs()) == [f"{name}-1", f"{name}-2"]
        streams = await conn.js_api("STREAM.NAMES")
        assert {"ALPHA_TASKS", "BETA_TASKS", "ALPHA_SUBMIT", "BETA_SUBMIT"} <= set(
            streams["streams"]
        )


async def test_a_burst_of_more_requests_than_the_responder_buffers_is_each_answered(
    app: stemd.App, conn: NatsConnection
) -> None:
    """More requests at once than the responder's buffer holds (64 per handler) wait in
    the subscription's queue: 2,000 at once all get their answer, each its own."""
    del app
    answers: dict[int, Any] = {}

    async def ask(i: int) -> None:
        reply = await conn.request(
            "stem.api.get", json.dumps({"run_id": f"burst-{i}"}).encode(), timeout=60
        )
        answers[i] = json.loads(reply.data)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i in range(2_000):
                tg.start_soon(ask, i)
    assert len(answers) == 2_000
    assert all(a["error"]["code"] == "not_found" for a in answers.values())
    assert all(f"burst-{i}" in a["error"]["message"] for i, a in answers.items())
