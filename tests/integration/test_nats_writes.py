"""What the connection writes goes out in order and whole: bursts past the socket's
buffer, many requests written together, publishes made while reconnecting."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from stemd._natsconn import NatsConnection, open_connection

if TYPE_CHECKING:
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio


async def _collect(conn: NatsConnection, subject: str, count: int) -> list[bytes]:
    sub = await conn.subscribe(subject, buffer=count + 10)
    got: list[bytes] = []
    try:
        with anyio.fail_after(30):
            while len(got) < count:
                got.append((await sub.receive()).data)
    finally:
        await sub.unsubscribe()
    return got


async def _event(conn: NatsConnection, kind: str) -> None:
    with anyio.fail_after(20):
        async for event in conn.events:
            if event.kind == kind:
                return


async def test_a_burst_larger_than_the_sockets_buffer_arrives_whole_and_in_order(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """20,000 publishes of 1 KiB from one loop turn and from many tasks (20 MiB, far past
    the transport's buffer): each arrives, once, in the order each task sent them."""
    sender = await open_connection(nats.url, name="burst", timeout=10)
    try:
        subject = "burst.a"
        received: list[bytes] = []

        async def collect() -> None:
            received.extend(await _collect(conn, subject, 20_000))

        async with anyio.create_task_group() as tg:
            tg.start_soon(collect)
            await conn.flush()  # the subscription is in place
            await anyio.sleep(0.05)
            body = b"x" * 1000

            async def send(task: int) -> None:
                for i in range(2_000):
                    await sender.publish(subject, b"%d:%d:" % (task, i) + body)

            async with anyio.create_task_group() as senders:
                for task in range(10):
                    senders.start_soon(send, task)
        seen: dict[int, list[int]] = {}
        for data in received:
            task, i, _ = data.split(b":", 2)
            seen.setdefault(int(task), []).append(int(i))
        assert sorted(seen) == list(range(10))
        assert all(order == list(range(2_000)) for order in seen.values())
    finally:
        await sender.close()


async def test_requests_made_in_one_turn_are_each_answered(conn: NatsConnection) -> None:
    """Many requests written together each get their own reply."""
    sub = await conn.subscribe("echo.>", buffer=1000)

    async def echo() -> None:
        async for msg in sub.messages:
            await conn.publish(msg.reply, msg.data)

    async with anyio.create_task_group() as tg:
        tg.start_soon(echo)
        replies: dict[int, bytes] = {}

        async def ask(i: int) -> None:
            replies[i] = (await conn.request(f"echo.{i}", b"%d" % i, timeout=10)).data

        with anyio.fail_after(30):
            async with anyio.create_task_group() as askers:
                for i in range(500):
                    askers.start_soon(ask, i)
        tg.cancel_scope.cancel()
    await sub.unsubscribe()
    assert replies == {i: b"%d" % i for i in range(500)}


async def test_publishes_made_while_the_server_is_away_go_out_once_it_is_back(
    nats: NatsServer,
) -> None:
    """A publish made while reconnecting is kept and written once reconnected, before the
    ones made after (a stream keeps them across the server's restart)."""
    sender = await open_connection(nats.url, name="away", timeout=5)
    try:
        await sender.ensure_stream({"name": "AWAY", "subjects": ["away.>"], "allow_direct": True})
        nats.kill()
        await _event(sender, "disconnected")
        for i in range(5):
            await sender.publish("away.a", b"%d" % i)
        await nats.start()
        await _event(sender, "reconnected")
        for i in range(5, 10):
            await sender.publish("away.a", b"%d" % i)
        await sender.flush()
        got = []
        for seq in range(1, 11):
            msg = await sender.get_next("AWAY", "away.a", seq)
            assert msg is not None
            got.append(msg.data)
    finally:
        await sender.close()
    assert got == [b"%d" % i for i in range(10)]
