"""Pull requests of a consumer shared by many workers and daemons: the server keeps at most
``max_waiting`` of them per consumer, so a daemon keeps few open whatever its concurrency,
and one refused for that is not sent again at once (a busy loop with the server)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from stemd._broker.pull import PullConsumer

if TYPE_CHECKING:
    from stemd._natsconn import NatsConnection

pytestmark = pytest.mark.anyio

STREAM = {"name": "WAIT", "subjects": ["wait.>"], "retention": "workqueue"}


def consumer(conn: NatsConnection, max_waiting: int) -> PullConsumer:
    """A pull consumer of the WAIT stream keeping at most ``max_waiting`` requests."""
    config = {
        "durable_name": "wait",
        "ack_policy": "explicit",
        "filter_subject": "wait.>",
        "max_waiting": max_waiting,
    }
    return PullConsumer(conn, "WAIT", config, expires=5.0)


async def receive(pull: PullConsumer, got: list[str]) -> None:
    """Take one message, note its subject and acknowledge it."""
    msg = await pull.next()
    got.append(msg.subject)
    await msg.ack()


async def test_workers_arriving_one_by_one_share_few_pull_requests(conn: NatsConnection) -> None:
    """64 workers that start waiting one after another open a handful of pull requests,
    not one each, and every message still reaches one of them."""
    await conn.ensure_stream(STREAM)
    pull = consumer(conn, 4096)
    got: list[str] = []
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(receive, pull, got)
                await anyio.sleep(0.002)
            info = await conn.js_api("CONSUMER.INFO.WAIT.wait")
            assert info["num_waiting"] <= 8
            for i in range(64):
                await conn.js_publish(f"wait.{i}", b"")
        assert sorted(got) == sorted(f"wait.{i}" for i in range(64))
    finally:
        await pull.close()


async def test_a_pull_request_refused_for_max_waiting_is_not_resent_at_once(
    conn: NatsConnection,
) -> None:
    """With the consumer's waiting requests full (another daemon's), a receiver's refused
    request is retried after a pause, not in a loop; it gets its message once there is room."""
    await conn.ensure_stream(STREAM)
    other = consumer(conn, 1)
    pull = consumer(conn, 1)
    got: list[str] = []
    try:
        await other.ensure()
        async with anyio.create_task_group() as tg:
            tg.start_soon(receive, other, got)  # takes the one waiting slot for 5 s
            with anyio.fail_after(5):
                while (await conn.js_api("CONSUMER.INFO.WAIT.wait"))["num_waiting"] < 1:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            tg.start_soon(receive, pull, got)
            await anyio.sleep(1.0)  # the window in which requests are counted
            assert pull.statistics().requests <= 15
            with anyio.fail_after(1.0):  # not held back until its old request's deadline
                await conn.js_publish("wait.a", b"")
                await conn.js_publish("wait.b", b"")
                await received(got, 2)
        assert sorted(got) == ["wait.a", "wait.b"]
    finally:
        await other.close()
        await pull.close()


async def received(got: list[str], count: int) -> None:
    """Wait until ``count`` messages were received (the receivers append as they get one)."""
    while len(got) < count:  # noqa: ASYNC110 - receivers in a task group, polled
        await anyio.sleep(0.01)
