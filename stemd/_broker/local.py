"""The in-process broker: run ids go straight from whoever enqueues to this process's workers.

It holds nothing durable: the store is the source of truth, and the sweeper re-enqueues
any runnable run after a restart or when another process made it runnable.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from stemd._store.base import Claim

__all__ = ["LocalBroker"]


class _LocalDelivery:
    __slots__ = ("_broker", "_queue", "claim", "run_id")

    # Nothing redelivers a run id of this process: no heartbeats needed.
    heartbeat: float | None = None

    def __init__(
        self, broker: LocalBroker, queue: str, run_id: str, claim: Claim | None = None
    ) -> None:
        self._broker = broker
        self._queue = queue
        self.run_id = run_id
        self.claim = claim

    async def ack(self) -> None:
        return None

    async def nak(self, delay: float | None = None) -> None:
        self._broker.requeue_later(self.run_id, self._queue, delay or 0.0, self.claim)

    async def in_progress(self) -> None:
        return None


class _Queue:
    __slots__ = ("claims", "delayed", "items", "pending", "waiters")

    def __init__(self) -> None:
        self.items: deque[str] = deque()
        self.pending: set[str] = set()
        # One event per idle receiver, oldest first: an enqueue wakes exactly one of them
        # (waking every idle worker for each run id costs more than the run itself).
        self.waiters: deque[anyio.Event] = deque()
        # (monotonic due time, run id) of naked deliveries waiting out their delay.
        self.delayed: list[tuple[float, str]] = []
        # The claims made for the workers already, by run id (see hand_off).
        self.claims: dict[str, Claim] = {}


def _wake_one(q: _Queue) -> None:
    if q.waiters:
        q.waiters.popleft().set()


class LocalBroker:
    """A :class:`~stemd._broker.base.Broker` living in this process: an ordered queue of run
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

    def queued(self, run_id: str) -> bool:
        """Whether ``run_id`` waits in one of the queues (a delayed one not counted)."""
        return any(run_id in q.pending for q in self._queues.values())

    def depth(self, queue: str) -> int:
        """Run ids waiting in ``queue``."""
        return len(self._queue(queue).items)

    def room(self, queue: str) -> int:
        """How many workers wait for a run of ``queue``, none queued before them."""
        q = self._queue(queue)
        return 0 if q.items else len(q.waiters)

    def hand_off(self, claim: Claim) -> None:
        """Queue ``claim``'s run for the workers, with the claim made for them."""
        rec = claim.record
        q = self._queue(rec.queue)
        q.claims[rec.run_id] = claim
        if rec.run_id not in q.pending:
            q.pending.add(rec.run_id)
            q.items.appendleft(rec.run_id)
            _wake_one(q)

    async def enqueue(self, run_id: str, queue: str, *, key: str | None = None) -> None:
        q = self._queue(queue)
        if run_id in q.pending:
            return
        q.pending.add(run_id)
        q.items.append(run_id)
        _wake_one(q)

    def requeue_later(
        self, run_id: str, queue: str, delay: float, claim: Claim | None = None
    ) -> None:
        """Enqueue ``run_id`` again once ``delay`` seconds have passed (without blocking),
        with its ``claim`` if one was made for the workers."""
        q = self._queue(queue)
        if claim is not None:
            q.claims[run_id] = claim
        heapq.heappush(q.delayed, (time.monotonic() + max(0.0, delay), run_id))
        # A receiver recomputes how long it may sleep.
        _wake_one(q)

    async def receive(self, queue: str) -> _LocalDelivery:
        q = self._queue(queue)
        while not q.items:
            wait: float | None = None
            now = time.monotonic()
            while q.delayed and q.delayed[0][0] <= now:
                _, run_id = heapq.heappop(q.delayed)
                await self.enqueue(run_id, queue)
            if q.items:
                break
            if q.delayed:
                wait = q.delayed[0][0] - now
            ready = anyio.Event()
            q.waiters.append(ready)
            try:
                if wait is None:  # no cancel scope when there is no deadline
                    await ready.wait()
                else:
                    with anyio.move_on_after(wait):
                        await ready.wait()
            except BaseException:
                if not ready.is_set():
                    q.waiters.remove(ready)
                elif q.items:
                    _wake_one(q)  # woken, but leaving: pass the wake-up on
                raise
            if not ready.is_set():  # the delay of a naked run id passed
                q.waiters.remove(ready)
        run_id = q.items.popleft()
        q.pending.discard(run_id)
        if q.items:
            _wake_one(q)
        claim = q.claims.pop(run_id, None) if q.claims else None
        return _LocalDelivery(self, queue, run_id, claim)
