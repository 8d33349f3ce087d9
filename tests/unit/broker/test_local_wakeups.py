"""The local broker wakes exactly one idle worker per run id, and never loses a wake-up."""

from __future__ import annotations

import anyio
import pytest

from stemd._broker.local import LocalBroker

pytestmark = pytest.mark.anyio


async def test_an_enqueue_wakes_one_idle_receiver() -> None:
    """With several workers idle, each run id goes to exactly one of them."""
    broker = LocalBroker()
    got: list[str] = []

    async def receive() -> None:
        got.append((await broker.receive("q")).run_id)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(receive)
        await anyio.wait_all_tasks_blocked()
        await broker.enqueue("r1", "q")
        await anyio.wait_all_tasks_blocked()
        assert got == ["r1"]
        # The other two never woke: they still wait on their own wake-ups.
        assert len(broker._queues["q"].waiters) == 2
        await broker.enqueue("r2", "q")
        await broker.enqueue("r3", "q")
    assert sorted(got) == ["r1", "r2", "r3"]


async def test_a_woken_receiver_that_leaves_passes_the_run_on() -> None:
    """A receiver cancelled right after being woken hands its run id to another."""
    broker = LocalBroker()
    got: list[str] = []

    async def receive(scope: anyio.CancelScope) -> None:
        with scope:
            got.append((await broker.receive("q")).run_id)

    first, second = anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(receive, first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(receive, second)
        await anyio.wait_all_tasks_blocked()
        await broker.enqueue("r1", "q")  # wakes the first receiver...
        first.cancel()  # ...which leaves before it takes the run id
        await anyio.wait_all_tasks_blocked()
        assert got == ["r1"]
        second.cancel()
    assert got == ["r1"]
    assert broker.depth("q") == 0
