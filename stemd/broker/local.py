"""The in-process broker: run ids go straight from whoever enqueues to this process's workers.

It holds nothing durable: the store is the source of truth, and the sweeper re-enqueues
any runnable run after a restart or when another process made it runnable.
"""

from __future__ import annotations

import heapq
import time
from collections import deque

import anyio

__all__ = ["LocalBroker"]


class _LocalDelivery:
    __slots__ = ("_broker", "_queue", "run_id")

    def __init__(self, broker: LocalBroker, queue: str, run_id: str) -> None:
        self._broker = broker
        self._queue = queue
        self.run_id = run_id

    async def ack(self) -> None:
        return None

    async def nak(self, delay: float | None = None) -> None:
        self._broker.requeue_later(self.run_id, self._queue, delay or 0.0)

    async def in_progress(self) -> None:
        return None


class _Queue:
    __slots__ = ("delayed", "items", "pending", "ready")

    def __init__(self) -> None:
        self.items: deque[str] = deque()
        self.pending: set[str] = set()
        self.ready = anyio.Event()
        # (monotonic due time, run id) of naked deliveries waiting out their delay.
        self.delayed: list[tuple[float, str]] = []


class LocalBroker:
    """A :class:`~stemd.broker.base.Broker` living in this process: an ordered queue of run
    ids per queue name, each id queued at most once at a time."""

    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}

    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue()
        return q

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def depth(self, queue: str) -> int:
        """Run ids waiting in ``queue``."""
        return len(self._queue(queue).items)

    async def enqueue(self, run_id: str, queue: str, *, key: str | None = None) -> None:
        q = self._queue(queue)
        if run_id in q.pending:
            return
        q.pending.add(run_id)
        q.items.append(run_id)
        q.ready.set()

    def requeue_later(self, run_id: str, queue: str, delay: float) -> None:
        """Enqueue ``run_id`` again once ``delay`` seconds have passed (without blocking)."""
        q = self._queue(queue)
        heapq.heappush(q.delayed, (time.monotonic() + max(0.0, delay), run_id))
        q.ready.set()

    async def receive(self, queue: str) -> _LocalDelivery:
        q = self._queue(queue)
        while not q.items:
            if q.ready.is_set():
                q.ready = anyio.Event()
            wait: float | None = None
            now = time.monotonic()
            while q.delayed and q.delayed[0][0] <= now:
                _, run_id = heapq.heappop(q.delayed)
                await self.enqueue(run_id, queue)
            if q.items:
                break
            if q.delayed:
                wait = q.delayed[0][0] - now
            with anyio.move_on_after(wait):
                await q.ready.wait()
        run_id = q.items.popleft()
        q.pending.discard(run_id)
        return _LocalDelivery(self, queue, run_id)
