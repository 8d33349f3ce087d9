"""A local lane beside a shared work queue: run ids that this process enqueues for a queue
its own workers serve go straight to them, without a trip through the stream.

A run made runnable here (started, woken by an event emitted here, by a timer fired here)
is committed to the store first, as always; its task is only a prompt. Handing that prompt
to this process's workers in memory saves the stream three operations (the publish and
its acknowledgement, the delivery to a pull request, the worker's ack): a third of what
nats-server does per workflow, about a sixth of the daemon's CPU. Nothing is lost with the
process: a run whose prompt was in the lane is runnable in the store with no lease, and
every daemon's sweeper enqueues such runs. What is kept from the other daemons is
bounded: the lane takes a run id only while it holds fewer than ``capacity`` and its
oldest has waited less than ``max_wait`` seconds (this process's workers keep up);
otherwise the run id goes to the stream, where any daemon takes it. Workers alternate
between the lane and the stream's messages already fetched when both have some, so
neither waits behind the other.

Only enqueues with a key (the engine's transitions) use the lane: the sweeper's enqueues
(no key) are recovery, meant for whichever daemon is free, and go to the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stemd._store.base import Claim

__all__ = ["Lane", "LaneDelivery"]


class Lane:
    """The run ids of one queue waiting for this process's workers, oldest first, each at
    most once (see the module docstring for ``capacity`` and ``max_wait``). ``wake``
    wakes a worker waiting on the stream, if one is (``False``: none is)."""

    __slots__ = ("capacity", "claims", "items", "later", "max_wait", "queued", "turn", "wake")

    def __init__(self, capacity: int, wake: Callable[[], bool], max_wait: float = 1.0) -> None:
        self.capacity = capacity
        self.wake = wake
        self.max_wait = max_wait
        # (run id, monotonic time it came), oldest first.
        self.items: deque[tuple[str, float]] = deque()
        # Every run id waiting here: in ``items``, or handed back to come again ``later``.
        self.queued: set[str] = set()
        self.later: dict[str, asyncio.TimerHandle] = {}
        # The claims made for the workers already, by run id (see hand).
        self.claims: dict[str, Claim] = {}
        # Whether the last run id taken came from the lane (the next comes from the
        # stream's fetched messages if there are any).
        self.turn = False

    def offer(self, run_id: str) -> bool:
        """Take ``run_id`` (``True``), unless the lane is full or its oldest run id has
        waited ``max_wait`` already (``False``: to the stream with it)."""
        if run_id in self.queued:
            return True
        now = time.monotonic()
        items = self.items
        if len(items) >= self.capacity or (items and now - items[0][1] >= self.max_wait):
            return False
        items.append((run_id, now))
        self.queued.add(run_id)
        self.wake()
        return True

    def room(self) -> int:
        """How many more run ids the lane takes now (0: full, or its oldest has waited
        ``max_wait``: the workers are behind)."""
        items = self.items
        if items and time.monotonic() - items[0][1] >= self.max_wait:
            return 0
        return max(0, self.capacity - len(items))

    def hand(self, claim: Claim) -> None:
        """Queue ``claim``'s run, first, with the claim made for the workers (whatever
        the lane holds: a worker waits for it)."""
        run_id = claim.record.run_id
        self.claims[run_id] = claim
        if run_id not in self.queued:
            self.queued.add(run_id)
            self._first(run_id)

    def put_back(self, run_id: str, delay: float | None = None, claim: Claim | None = None) -> None:
        """Queue ``run_id`` again, first, whatever the lane holds (handed back by a
        worker that took it: the lane had room for it then), with its ``claim`` if one
        was made for the workers; after ``delay`` seconds if given (a slice that failed
        is not tried again at once)."""
        if claim is not None:
            self.claims[run_id] = claim
        if run_id in self.queued:
            return
        self.queued.add(run_id)
        if delay:
            self.later[run_id] = asyncio.get_running_loop().call_later(delay, self._due, run_id)
        else:
            self._first(run_id)

    def _due(self, run_id: str) -> None:
        if self.later.pop(run_id, None) is not None:
            self._first(run_id)

    def _first(self, run_id: str) -> None:
        self.items.appendleft((run_id, time.monotonic()))
        self.wake()

    def take(self, stream_ready: bool) -> str | None:
        """The next run id of the lane, or ``None`` when it is empty or it is the turn of
        the stream's fetched messages (``stream_ready``: there are some). Its claim, if
        one was made, is in ``claims``."""
        if not self.items or (self.turn and stream_ready):
            self.turn = False
            return None
        self.turn = True
        run_id = self.items.popleft()[0]
        self.queued.discard(run_id)
        return run_id

    def drain(self) -> list[str]:
        """Empty the lane; its run ids, oldest first, then those handed back to come
        again later."""
        items = [run_id for run_id, _ in self.items]
        for run_id, handle in self.later.items():
            handle.cancel()
            items.append(run_id)
        self.items.clear()
        self.later.clear()
        self.queued.clear()
        # Runs claimed here: given back when the session ends (or their claims expire).
        self.claims.clear()
        return items


class LaneDelivery:
    """A run id handed over through a :class:`Lane` (with its ``claim`` if one was made
    for the worker): nothing to acknowledge; handed back (:meth:`nak`), it goes back to
    the lane after the delay, claim and all (to the stream once the broker closed)."""

    __slots__ = ("_give_back", "claim", "queue", "run_id")

    heartbeat: float | None = None

    def __init__(
        self,
        run_id: str,
        queue: str,
        give_back: Callable[[LaneDelivery, float | None], Awaitable[None]],
        claim: Claim | None = None,
    ) -> None:
        self.run_id = run_id
        self.queue = queue
        self._give_back = give_back
        self.claim = claim

    async def ack(self) -> None:
        return None

    async def nak(self, delay: float | None = None) -> None:
        await self._give_back(self, delay)

    async def in_progress(self) -> None:
        return None
