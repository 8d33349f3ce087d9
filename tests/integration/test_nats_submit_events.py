"""Durable submission through JetStream (``stem.submit.<workflow>``) and run events
(``stem.events.run.<run_id>``) against a real nats-server."""

from __future__ import annotations

import json
import socket
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._actors.ingress import submit_stream_config
from tests.helpers import wait_status, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import TaskStatus

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

flow = stemd.Flow("orders.flow")


@flow.step("take")
async def take(ctx: stemd.FlowContext) -> Any:
    """Returns the params."""
    return ctx.params


@flow.step("ship")
async def ship(ctx: stemd.FlowContext) -> Any:
    """Fails when the params are ``"boom"``; otherwise ships."""
    if ctx.params == "boom":
        raise RuntimeError("out of stock")
    return {"shipped": ctx.previous_result}


waiter = stemd.Flow("waiter.flow")


@waiter.step("wait")
async def wait(ctx: stemd.FlowContext) -> Any:
    """Waits for an event that never comes."""
    return await ctx.wait_for_event("never.comes")


@asynccontextmanager
async def daemon(url: str) -> AsyncIterator[stemd.App]:
    """A daemon on ``url`` serving the API and the submission stream."""
    async with stemd.App(
        store=url, broker=url, workflows=[flow, waiter], options=stemd.AppOptions(nats=url)
    ) as app:
        yield app


async def submit(conn: NatsConnection, workflow: str, body: bytes, run_id: str | None) -> None:
    """Publish a submission of ``workflow``, with ``run_id`` as its message id if given."""
    headers = {"Nats-Msg-Id": run_id} if run_id is not None else None
    await conn.js_publish(f"stem.submit.{workflow}", body, headers=headers)


async def count_runs(app: stemd.App, count: int) -> bool:
    """Whether there are at least ``count`` runs."""
    return len(await app.list_runs(limit=1000)) >= count


async def test_submissions_wait_for_a_daemon_and_never_run_twice(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """Runs published while no daemon is up start when one comes; duplicates do not."""
    async with daemon(nats.url):
        pass  # a daemon ran once: the submission stream exists
    await submit(conn, "orders.flow", b'{"sku": "a"}', "order-1")
    await submit(conn, "orders.flow", b'{"sku": "a"}', "order-1")  # same id, again
    await submit(conn, "orders.flow", b'"b"', "order-2")
    await submit(conn, "orders.flow", b"", "order-3")  # no params
    async with daemon(nats.url) as app:
        for run_id in ("order-1", "order-2", "order-3"):
            await wait_status(app, run_id, stemd.RunStatus.COMPLETED)
        assert (await app.get_run("order-1")).result == {"shipped": {"sku": "a"}}  # type: ignore[union-attr]
        assert (await app.get_run("order-3")).params is None  # type: ignore[union-attr]
        # Past the stream's duplicate window a copy is stored again, and is still only a
        # duplicate run id.
        await conn.ensure_stream(submit_stream_config(duplicate_window=0.1))
        # The server forgets message ids on a timer of its own: publish until it stores
        # the copy (a copy it still calls a duplicate is not stored).
        for _ in range(200):  # at most 10 s
            ack = await conn.js_publish(
                "stem.submit.orders.flow", b'{"sku": "zzz"}', headers={"Nats-Msg-Id": "order-1"}
            )
            if not ack.duplicate:
                break
            await anyio.sleep(0.05)
        await submit(conn, "orders.flow", b'"c"', "order-4")
        await wait_status(app, "order-4", stemd.RunStatus.COMPLETED)
        await wait_until(stream_empty, conn, what="the submission stream to drain")
        info = await conn.js_api("STREAM.INFO.STEM_SUBMIT")
        assert info["state"]["last_seq"] == 5  # 3 stored at first, then both copies
        assert len(await app.list_runs(limit=100)) == 4
        assert (await app.get_run("order-1")).params == {"sku": "a"}  # type: ignore[union-attr]


async def test_submissions_that_cannot_run_are_dropped_and_do_not_block(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """Unknown workflows, bad params and bad run ids are rejected; the rest go through."""
    async with daemon(nats.url) as app:
        await submit(conn, "no.such.flow", b"{}", "bad-1")
        await submit(conn, "orders.flow", b"{not json", "bad-2")
        await submit(conn, "orders.flow", b'{"a": "\xc5E"}', "bad-3")  # a string not UTF-8
        await submit(conn, "orders.flow", b'"\xff"', "bad-4")
        await submit(conn, "orders.flow", b"1", "bad id")
        await submit(conn, "orders.flow", b"2", None)  # no id: one is derived
        await submit(conn, "orders.flow", b"3", "good")
        await wait_status(app, "good", stemd.RunStatus.COMPLETED)
        await wait_until(count_runs, app, 2, what="the submission without id")
        runs = {r.run_id: r for r in await app.list_runs(limit=100)}
        assert "good" in runs
        assert {r.params for r in runs.values()} == {2, 3}
        await wait_until(stream_empty, conn, what="the submission stream to drain")


async def test_a_submission_that_fails_unexpectedly_is_retried_not_lost(
    nats: NatsServer, conn: NatsConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error while starting one submission (a bug) neither crashes the
    ingress nor drops the submission: it is redelivered later and then starts its run,
    while the others go through at once."""
    async with daemon(nats.url) as app:
        engine = app.engine
        real_start = engine.start_run
        failures: list[str] = []

        async def flaky_start(workflow: str, params: Any = None, **kw: Any) -> Any:
            if kw.get("run_id") == "poison" and len(failures) < 2:
                failures.append("poison")
                raise RuntimeError("a bug while starting")
            return await real_start(workflow, params, **kw)

        monkeypatch.setattr(engine, "start_run", flaky_start)
        await submit(conn, "orders.flow", b'"p"', "poison")
        await submit(conn, "orders.flow", b'"f"', "fine")
        await wait_status(app, "fine", stemd.RunStatus.COMPLETED)
        # Redelivered after 1 s, then 2 s: the third delivery starts it.
        await wait_status(app, "poison", stemd.RunStatus.COMPLETED, timeout=20)
        assert failures == ["poison", "poison"]
        assert app.supervisor is not None
        assert app.supervisor.statistics().restarts["ingress"] == 0
        await wait_until(stream_empty, conn, what="the submission stream to drain")


def raw_publish(port: int, frames: bytes) -> None:
    """Send protocol frames as a client that writes any bytes, and wait until the server
    has processed them (its PONG to a PING sent after them)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"headers":true}\r\n' + frames + b"PING\r\n")
        received = b""
        while b"PONG" not in received:
            chunk = sock.recv(4096)
            assert chunk, f"the server closed the connection: {received!r}"
            received += chunk
        assert b"-ERR" not in received, received


async def test_subjects_that_are_not_utf8_are_refused_and_the_daemon_keeps_serving(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """A submission and a request on subjects that are not UTF-8 (the server relays any
    bytes) are refused like other bad input; the daemon's connection keeps reading."""
    async with daemon(nats.url) as app:
        frames = b"PUB stem.submit.orders.\xc5E 2\r\n{}\r\n"
        frames += b"PUB stem.api.g\xc5t _INBOX.raw 2\r\n{}\r\n"
        header = b"NATS/1.0\r\nX-Odd: \xc5E\r\n\r\n"
        frames += b"HPUB stem.submit.orders.flow %d %d\r\n" % (len(header), len(header) + 1)
        frames += header + b"7\r\n"
        await anyio.to_thread.run_sync(raw_publish, nats.port, frames)
        await wait_until(stream_empty, conn, what="the submission stream to drain")
        # The one valid submission (an odd header) ran; the bad subject changed nothing.
        [run] = await app.list_runs(limit=10)
        assert (run.workflow, run.params) == ("orders.flow", 7)
        await wait_status(app, run.run_id, stemd.RunStatus.COMPLETED)
        # Requests and submissions after them are still served.
        reply = json.loads((await conn.request("stem.api.get", b'{"run_id": "ghost"}')).data)
        assert reply["error"]["code"] == "not_found"
        await submit(conn, "orders.flow", b"8", "after")
        await wait_status(app, "after", stemd.RunStatus.COMPLETED)


async def stream_empty(conn: NatsConnection) -> bool:
    """Whether the submission stream holds no message."""
    info = await conn.js_api("STREAM.INFO.STEM_SUBMIT")
    return int(info["state"]["messages"]) == 0


async def collect(
    conn: NatsConnection,
    subject: str,
    until: str,
    into: list[dict[str, Any]],
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Put the events on ``subject`` into ``into`` until one has status ``until``
    (5 s at most); ready once the subscription is in place."""
    sub = await conn.subscribe(subject)
    await conn.flush()
    task_status.started()
    try:
        with anyio.fail_after(5):
            async for msg in sub.messages:
                into.append(json.loads(msg.data))
                if into[-1]["status"] == until:
                    return
    finally:
        await sub.unsubscribe()


async def test_run_events_follow_every_status_change(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """A run publishes pending, running and completed (with its result) on its subject."""
    seen: list[dict[str, Any]] = []
    async with daemon(nats.url) as app, anyio.create_task_group() as tg:
        await tg.start(collect, conn, "stem.events.run.ev-1", "completed", seen)
        await app.start_workflow("orders.flow", {"n": 1}, run_id="ev-1")
    assert [e["status"] for e in seen] == ["pending", "running", "completed"]
    assert all(e["run_id"] == "ev-1" and e["workflow"] == "orders.flow" for e in seen)
    assert "result" not in seen[0]
    assert seen[-1]["result"] == {"shipped": {"n": 1}}


async def test_failed_and_cancelled_runs_publish_their_cause(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """A failed run's event carries its error; a cancelled one its reason."""
    async with daemon(nats.url) as app:
        failed: list[dict[str, Any]] = []
        cancelled: list[dict[str, Any]] = []
        async with anyio.create_task_group() as tg:
            await tg.start(collect, conn, "stem.events.run.f-1", "failed", failed)
            await tg.start(collect, conn, "stem.events.run.c-1", "cancelled", cancelled)
            await app.start_workflow("orders.flow", "boom", run_id="f-1")
            await app.start_workflow("waiter.flow", run_id="c-1")
            await wait_status(app, "c-1", stemd.RunStatus.SUSPENDED)
            await app.cancel_run("c-1", reason="operator")
    assert failed[-1]["status"] == "failed"
    assert failed[-1]["error"]["type"] == "RuntimeError"
    assert failed[-1]["error"]["message"] == "out of stock"
    assert "result" not in failed[-1]
    assert [e["status"] for e in cancelled][-2:] == ["suspended", "cancelled"]
    assert cancelled[-1]["cancel_reason"] == "operator"


async def test_submissions_take_a_priority_and_a_dedup_key(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """Stem-Priority is recorded with the run; Stem-Dedup-Key starts nothing while a live run
    holds the key; a bad priority or an empty key is dropped and starts nothing."""

    async def publish(run_id: str, **headers: str) -> None:
        await conn.js_publish(
            "stem.submit.waiter.flow", b"{}", headers={"Nats-Msg-Id": run_id, **headers}
        )

    async with daemon(nats.url) as app:
        await publish("w-1", **{"Stem-Dedup-Key": "order-1", "Stem-Priority": "7"})
        await wait_status(app, "w-1", stemd.RunStatus.SUSPENDED)
        await publish("w-2", **{"stem-dedup-key": "order-1"})  # the name in any case
        await publish("w-3", **{"Stem-Dedup-Key": "order-2", "Stem-Priority": "-1000"})
        await publish("bad-1", **{"Stem-Priority": "1001"})
        await publish("bad-2", **{"Stem-Priority": "high"})
        await publish("bad-3", **{"Stem-Dedup-Key": "k" * 513})
        await wait_status(app, "w-3", stemd.RunStatus.SUSPENDED)
        await wait_until(stream_empty, conn, what="the submission stream to drain")
        runs = {r.run_id for r in await app.list_runs(limit=100)}
        assert runs == {"w-1", "w-3"}
        for run_id, priority in (("w-1", 7), ("w-3", -1000)):
            rec = await app.engine.store.get_run(run_id)
            assert rec is not None
            assert rec.priority == priority
        # Once the run holding the key has ended, the key starts a new run.
        await app.cancel_run("w-1")
        await publish("w-4", **{"Stem-Dedup-Key": "order-1"})
        await wait_status(app, "w-4", stemd.RunStatus.SUSPENDED)
