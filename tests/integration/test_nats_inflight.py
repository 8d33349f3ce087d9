"""Tasks a dead daemon had received and not claimed yet: on NATS they stay with the
consumer's dead receiver until ``ack_wait`` runs out. The daemon that finds the session
dead sends them again, so their runs go on at once."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import anyio
import pytest

import stemd
from stemd._broker.jetstream import JetStreamBroker
from stemd._store.sessions import SessionRecord, SessionStore

if TYPE_CHECKING:
    from pathlib import Path

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

flow = stemd.Flow("inflight.one")


@flow.step("only")
async def only(ctx: stemd.FlowContext) -> str:
    """Its run's id."""
    return ctx.run_id


async def test_tasks_a_dead_daemon_received_go_on_at_once(nats: NatsServer, tmp_path: Path) -> None:
    """A dead daemon's session (its lock file free) had fetched three runs' tasks and
    acknowledged none: the daemon that ends the session sends them again, and the runs
    complete long before the consumer's ack_wait (a minute here) would hand them out."""
    broker_url = f"{nats.url}?ack_wait=60"
    async with stemd.App(store=nats.url, broker=broker_url, workers=False) as client:
        ids = [(await client.start_run("inflight.one", {}))[0] for _ in range(3)]
        dead = JetStreamBroker(broker_url)
        await dead.open()
        try:
            with anyio.fail_after(10):
                got = {(await dead.consumer("workflow").next()).subject for _ in ids}
            assert len(got) == 3
        finally:
            await dead.close()  # what it fetched stays delivered, unacknowledged
        lock = tmp_path / "ghost.lock"
        lock.touch()
        st = os.stat(lock)
        now = client.engine.clock.now()
        store = client.store
        assert isinstance(store, SessionStore)
        await store.put_session(
            SessionRecord(
                session_id="ghost",
                host=socket.gethostname(),
                pid=1,
                lock=str(lock),
                lock_id=f"{st.st_dev}:{st.st_ino}",
                started_at=now,
                renewed_at=now,
                lease=4.0,
            )
        )
        async with stemd.App(store=nats.url, broker=broker_url, workflows=[flow]) as survivor:
            with anyio.fail_after(20):
                for run_id in ids:
                    done = await survivor.wait_for_completion(run_id, timeout=20)
                    assert done.is_completed, done


async def test_only_delivered_tasks_are_sent_again_and_once(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """Of two runs' tasks, the one delivered and not acknowledged is sent again, the one
    waiting for a worker is not; doing it again (the follow-up, another daemon) adds no
    second copy, nor do two daemons doing it at once."""
    broker = JetStreamBroker(nats.url)
    await broker.open()
    try:
        await broker.enqueue("r1", "q", key="r1:1")
        with anyio.fail_after(10):
            first = await broker.consumer("q").next()
        assert first.subject.endswith(".r1")
        await broker.enqueue("r2", "q", key="r2:1")
        found = [("r1", "q"), ("r2", "q"), ("r3", "q")]
        assert await broker.redeliver_in_flight(found) == 1
        info = await conn.js_api("STREAM.INFO.STEM_TASKS")
        assert info["state"]["messages"] == 3  # r1 delivered, its copy, r2
        assert await broker.redeliver_in_flight(found) == 0  # its copy waits
        again = await conn.js_api("STREAM.INFO.STEM_TASKS")
        assert again["state"]["last_seq"] == info["state"]["last_seq"]
        racing = JetStreamBroker(nats.url)
        await racing.open()
        try:
            with anyio.fail_after(10):
                assert (await broker.consumer("q").next()).subject.endswith(".r2")
            before = again["state"]["last_seq"]
            async with anyio.create_task_group() as tg:
                for one in (broker, racing):
                    tg.start_soon(one.redeliver_in_flight, [("r2", "q")])
            after = (await conn.js_api("STREAM.INFO.STEM_TASKS"))["state"]["last_seq"]
            assert after == before + 1
        finally:
            await racing.close()
    finally:
        await broker.close()
