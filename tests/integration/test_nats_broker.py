"""The JetStream broker against a real nats-server: acks, redelivery, heartbeats,
deduplication and dead letters."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._broker.jetstream import JetStreamBroker, JetStreamDelivery
from stemd._broker.jetstream_deadletter import DeadLetters
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def open_broker(url: str, **options: Any) -> AsyncIterator[JetStreamBroker]:
    """An opened JetStream broker on ``url``, closed on exit."""
    broker = JetStreamBroker.from_url(url, **options)
    await broker.open()
    try:
        yield broker
    finally:
        await broker.close()


async def stream_messages(conn: NatsConnection, stream: str = "STEM_TASKS") -> int:
    """How many messages ``stream`` holds."""
    info = await conn.js_api(f"STREAM.INFO.{stream}")
    return int(info["state"]["messages"])


async def has_messages(conn: NatsConnection, stream: str, count: int) -> bool:
    """Whether ``stream`` holds exactly ``count`` messages."""
    return await stream_messages(conn, stream) == count


async def never_receives(broker: JetStreamBroker, queue: str) -> None:
    """Fail if ``queue`` delivers anything (run it under a time limit)."""
    delivery = await broker.receive(queue)
    raise AssertionError(f"{delivery.run_id} delivered again")


async def holds(predicate: Any) -> bool:
    """Whether ``predicate()`` is true."""
    return bool(predicate())


async def receive(broker: JetStreamBroker, queue: str, timeout: float) -> JetStreamDelivery | None:
    """The next delivery of ``queue``, or None after ``timeout`` seconds."""
    with anyio.move_on_after(timeout):
        return await broker.receive(queue)
    return None


async def test_enqueue_with_the_same_key_stores_one_task(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """Re-enqueueing a transition (same key) is dropped by Nats-Msg-Id deduplication."""
    async with open_broker(nats.url) as broker:
        await broker.enqueue("r1", "q", key="r1:1")
        await broker.enqueue("r1", "q", key="r1:1")
        assert await stream_messages(conn) == 1
        await broker.enqueue("r1", "q", key="r1:2")
        assert await stream_messages(conn) == 2


async def test_enqueue_without_key_adds_nothing_while_a_task_is_queued(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """A sweeper's enqueue (no key) publishes only when no task of that run is queued."""
    async with open_broker(nats.url) as broker:
        await broker.enqueue("r1", "q")
        await broker.enqueue("r1", "q")
        assert await stream_messages(conn) == 1
        delivery = await broker.receive("q")
        await broker.enqueue("r1", "q")  # still in flight: nothing new
        assert await stream_messages(conn) == 1
        await delivery.ack()
        await wait_until(has_messages, conn, "STEM_TASKS", 0, what="the ack")
        await broker.enqueue("r1", "q")
        assert await stream_messages(conn) == 1


async def test_task_stays_until_acked_and_is_redelivered_after_a_crash(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """An unacknowledged task survives its worker and goes to another after ack_wait."""
    async with open_broker(nats.url, ack_wait=1) as first:
        await first.enqueue("r1", "q", key="r1:0")
        taken = await first.receive("q")
        assert taken.run_id == "r1"
        assert taken.num_delivered == 1
    # `first` is gone without acking, as if its process had died.
    assert await stream_messages(conn) == 1
    async with open_broker(nats.url, ack_wait=1) as second:
        again = await receive(second, "q", timeout=5)
        assert again is not None
        assert again.run_id == "r1"
        assert again.num_delivered == 2
        await again.ack()
        await wait_until(has_messages, conn, "STEM_TASKS", 0, what="the ack")


async def test_in_progress_holds_a_task_past_ack_wait(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """A worker that keeps sending in_progress() keeps its task from being redelivered."""
    async with open_broker(nats.url, ack_wait=1) as worker, open_broker(nats.url) as other:
        await worker.enqueue("r1", "q", key="r1:0")
        delivery = await worker.receive("q")
        assert delivery.heartbeat == pytest.approx(1 / 3)

        async def beat() -> None:
            while True:
                await delivery.in_progress()
                await anyio.sleep(0.3)

        async with anyio.create_task_group() as tg:
            tg.start_soon(beat)
            assert await receive(other, "q", timeout=2.5) is None
            tg.cancel_scope.cancel()
        await delivery.ack()
        await wait_until(has_messages, conn, "STEM_TASKS", 0, what="the ack")


async def test_receivers_share_a_queue_without_losing_tasks(nats: NatsServer) -> None:
    """Many receivers on two brokers get every task once (pull requests never orphan one)."""
    async with open_broker(nats.url) as a, open_broker(nats.url) as b:
        for i in range(200):
            await a.enqueue(f"r{i}", "q", key=f"r{i}:0")
        got: list[str] = []

        async def take(broker: JetStreamBroker) -> None:
            while True:
                delivery = await broker.receive("q")
                got.append(delivery.run_id)
                await delivery.ack()

        with anyio.move_on_after(10):
            async with anyio.create_task_group() as tg:
                for broker in (a, b) * 8:
                    tg.start_soon(take, broker)
                await wait_until(holds, lambda: len(got) >= 200, what="200 tasks")
                tg.cancel_scope.cancel()
        assert sorted(got) == sorted(f"r{i}" for i in range(200))


async def test_a_task_delivered_too_often_is_dead_lettered(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """Past max_deliver a task is copied to the DLQ stream and removed from the queue."""
    async with open_broker(nats.url, ack_wait=1, max_deliver=2) as broker:
        dead = DeadLetters(broker)
        async with anyio.create_task_group() as tg:
            await tg.start(dead.run)
            await broker.enqueue("poison", "q", key="poison:0")
            for _ in range(2):
                delivery = await broker.receive("q")
                await delivery.nak()
            # The server gives up (and says so) when it would deliver a third time: that
            # needs a waiting receiver, as a running daemon always has one.
            tg.start_soon(never_receives, broker, "q")
            await wait_until(has_messages, conn, "STEM_TASKS_DLQ", 1, what="the dead letter")
            await wait_until(has_messages, conn, "STEM_TASKS", 0, what="the queue to empty")
            tg.cancel_scope.cancel()
        assert dead.statistics().dead_lettered == 1
        letter = await conn.direct_get("STEM_TASKS_DLQ", "stem.dlq.q.poison")
        assert letter is not None
        assert letter.headers is not None
        assert letter.headers["Stem-Subject"] == "stem.task.q.poison"
        assert letter.headers["Stem-Deliveries"] == "2"


async def test_a_dead_lettered_run_is_cancelled(nats: NatsServer, conn: NatsConnection) -> None:
    """The daemon's dead-letter actor cancels the run so that nobody retries the poison."""
    flow = stemd.Flow("dl.flow")

    @flow.step("only")
    async def only(ctx: stemd.FlowContext) -> int:
        return 1

    broker_url = f"{nats.url}?ack_wait=1&max_deliver=2"
    async with (
        stemd.App(store="memory://", broker=broker_url, workflows=[flow], queue="main") as app,
        open_broker(broker_url) as crashing,
    ):
        run_id = await app.start_workflow(flow, queue="elsewhere")
        for _ in range(2):
            delivery = await crashing.receive("elsewhere")
            assert delivery.run_id == run_id
            await delivery.nak()
        async with anyio.create_task_group() as tg:
            tg.start_soon(never_receives, crashing, "elsewhere")
            result = await app.wait_for_completion(run_id, timeout=10)
            tg.cancel_scope.cancel()
        assert result.is_cancelled
        assert result.state is not None
        assert result.state.cancel_reason == "dead-lettered after 2 deliveries"


async def test_ack_only_after_the_outcome_is_committed(
    nats: NatsServer, conn: NatsConnection
) -> None:
    """While a step runs its task stays in the work queue; it goes once the run completes."""
    flow = stemd.Flow("ack.flow")
    release = anyio.Event()
    entered = anyio.Event()

    @flow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> str:
        entered.set()
        await release.wait()
        return "done"

    async with stemd.App(
        store=nats.url, broker=f"{nats.url}?ack_wait=1&local=0", workflows=[flow]
    ) as app:
        run_id = await app.start_workflow(flow)
        with anyio.fail_after(5):
            await entered.wait()
        # Longer than ack_wait: the pool's heartbeats keep the task with this worker.
        await anyio.sleep(1.5)
        assert await stream_messages(conn) == 1
        release.set()
        result = await app.wait_for_completion(run_id, timeout=5)
        assert result.value == "done"
        assert result.state is not None
        assert result.state.attempts == 1
        await wait_until(has_messages, conn, "STEM_TASKS", 0, what="the ack")
        info = await conn.js_api("CONSUMER.INFO.STEM_TASKS.workflow")
        assert info["num_redelivered"] == 0
