"""The timer: wakes sleeping runs, times out event waits, runs retry backoffs, enforces
cancellation policies, deletes runs past their retention and forgets the topic events
past theirs (every ``prune_interval`` seconds).

It holds the next wake-ups in a heap, fed by the store (at start and at each refill) and by
this process's own commits (it observes the engine's run changes while it runs, see
:meth:`Timer.schedule`), and sleeps exactly until the earliest one instead of polling on a
fixed interval. Firing is a conditional transition in the
store, so when several daemons hold the same wake-up, one acts and the rest do nothing.
"""

from __future__ import annotations

import heapq
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import msgspec
import structlog

from stemd._engine.observer import OnTimer
from stemd._health import outage_of

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from stemd._engine.engine import Engine

__all__ = ["Timer", "TimerStats"]

log = structlog.get_logger("stemd.timer")


class TimerStats(msgspec.Struct, frozen=True, kw_only=True):
    """What the timer holds and has done."""

    scheduled: int
    fired: int
    last_lag: float
    max_lag: float


class Timer:
    """The timer actor.

    Args:
        engine: the engine whose store holds the timers.
        refill_interval: longest sleep before the store is asked again for wake-ups
            (catches timers written by other processes).
        horizon: how far ahead wake-ups are loaded into the heap.
        batch: most wake-ups loaded per refill.
        parallel: most wake-ups fired at once. Firing is a store write and an enqueue:
            one after the other, they cap the wake-ups per second at one over their
            latency (a few hundred on JetStream), and wake-ups due together queue up;
            fired together, SQLite commits them in one transaction and JetStream
            overlaps their round trips.
    """

    name = "timer"

    def __init__(
        self,
        engine: Engine,
        *,
        refill_interval: float = 5.0,
        horizon: float = 60.0,
        batch: int = 10_000,
        parallel: int = 32,
        prune_interval: float = 60.0,
    ) -> None:
        self.engine = engine
        self.refill_interval = refill_interval
        self.horizon = horizon
        self.batch = batch
        self.parallel = max(1, parallel)
        self.prune_interval = prune_interval
        self._heap: list[tuple[datetime, str]] = []
        self._poke = anyio.Event()
        self._fired = 0
        self._last_lag = 0.0
        self._max_lag = 0.0

    def statistics(self) -> TimerStats:
        return TimerStats(
            scheduled=len(self._heap),
            fired=self._fired,
            last_lag=self._last_lag,
            max_lag=self._max_lag,
        )

    def schedule(self, at: datetime, run_id: str) -> None:
        """Hold a wake-up for ``run_id`` at ``at`` (duplicates are harmless).

        One beyond the horizon is left to a refill, which loads it from the store while it
        is still at least ``horizon - refill_interval`` seconds away: the heap holds the
        next minute's wake-ups, not one entry per sleeping run."""
        if at > self.engine.clock.now() + timedelta(seconds=self.horizon):
            return
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (at, run_id))
        if earliest is None or at < earliest:
            self._poke.set()

    async def refill(self) -> datetime | None:
        """Load the wake-ups due within the horizon from the store. When more are due than
        one refill loads (``batch``), return the last one loaded: the next refill must
        come before it."""
        until = self.engine.clock.now() + timedelta(seconds=self.horizon)
        held = set(self._heap)
        entries = await self.engine.store.due_timers(until, self.batch)
        for entry in entries:
            if entry not in held:
                heapq.heappush(self._heap, entry)
        return entries[-1][0] if len(entries) >= self.batch else None

    def _next_refill(self, last_loaded: datetime | None) -> datetime:
        now = self.engine.clock.now()
        at = now + timedelta(seconds=self.refill_interval)
        if last_loaded is not None:
            # Before the last one loaded comes due, but not in a loop.
            soonest = now + timedelta(seconds=min(0.5, self.refill_interval))
            at = max(soonest, min(at, last_loaded - timedelta(seconds=1)))
        return at

    async def fire_due(self) -> int:
        """Fire every wake-up whose time has come, ``parallel`` at a time; return how many
        were fired."""
        fired = 0
        clock = self.engine.clock
        while self._heap and self._heap[0][0] <= clock.now():
            due: list[tuple[datetime, str]] = []
            while self._heap and self._heap[0][0] <= clock.now() and len(due) < self.parallel:
                due.append(heapq.heappop(self._heap))
            fired += await self._fire_together(due)
        return fired

    async def _fire_together(self, due: list[tuple[datetime, str]]) -> int:
        """Fire ``due`` concurrently; return how many did something. A failed one goes back
        in the heap a second later, then the first failure is raised (the supervisor
        restarts the timer: with backoff and as degraded, if the store or NATS is away)."""
        fired = 0
        failures: list[Exception] = []

        async def fire(at: datetime, run_id: str) -> None:
            nonlocal fired
            try:
                action = await self.engine.fire_timer(run_id)
            except Exception as exc:
                if outage_of(exc) is None:
                    log.exception("timer firing failed", run_id=run_id, error=repr(exc))
                else:  # reported once, as degraded, by the supervisor
                    log.debug("timer firing failed", run_id=run_id, error=repr(exc))
                heapq.heappush(self._heap, (at + timedelta(seconds=1), run_id))
                failures.append(exc)
                return
            if action != "none":
                lag = (self.engine.clock.now() - at).total_seconds()
                self._last_lag = lag
                self._max_lag = max(self._max_lag, lag)
                self._fired += 1
                fired += 1

        if len(due) == 1:
            await fire(*due[0])
        else:
            async with anyio.create_task_group() as tg:
                for at, run_id in due:
                    tg.start_soon(fire, at, run_id)
        if failures:
            raise failures[0]
        return fired

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # Subscribed before the first refill: no change falls between the two.
        unsubscribe = self.engine.observers.subscribe(OnTimer(self.schedule))
        try:
            last_loaded = await self.refill()
            task_status.started()
            clock = self.engine.clock
            next_refill = self._next_refill(last_loaded)
            next_prune = clock.now()
            while True:
                await self.fire_due()
                now = clock.now()
                if now >= next_prune:
                    await self.engine.prune_events()
                    next_prune = now + timedelta(seconds=self.prune_interval)
                if now >= next_refill:
                    next_refill = self._next_refill(await self.refill())
                    continue
                until = min(next_refill, next_prune)
                if self._heap:
                    until = min(until, self._heap[0][0])
                await self._sleep_until(until)
        finally:
            unsubscribe()

    async def _sleep_until(self, until: datetime) -> None:
        """Sleep until ``until`` on the clock, or until an earlier wake-up is scheduled.

        An instant, not a duration: time that passes between computing it and starting to
        sleep (a test moving a manual clock) must not push the wake-up later."""
        if self._poke.is_set():
            self._poke = anyio.Event()
            return
        poke = self._poke
        async with anyio.create_task_group() as tg:

            async def on_time() -> None:
                await self.engine.clock.sleep_until(until)
                tg.cancel_scope.cancel()

            async def on_poke() -> None:
                await poke.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_time)
            tg.start_soon(on_poke)
        if poke.is_set():
            self._poke = anyio.Event()
