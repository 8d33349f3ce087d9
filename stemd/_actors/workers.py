"""The worker pool: N concurrent executors fed by the broker.

A delivery acknowledged late is handed to someone else (JetStream's ``ack_wait``): a
delivery whose ``heartbeat`` is set (seconds) gets ``in_progress()`` that often while its
run is being advanced, from one ticker task for the whole pool.

Draining (:meth:`WorkerPool.drain`, what a graceful shutdown does): the workers stop taking
deliveries — those waiting for one stop waiting — and the slices in flight get a grace
period to finish, commit and acknowledge their delivery. Whatever still runs when the
pool is cancelled afterwards is released by the engine, and re-run from the interrupted
step by whoever takes the run next.

Degraded (:class:`~stemd._health.Health`: a dependency is away): the workers claim no
run — each holds the delivery it has, if any — except one at a time every few seconds
(backing off to ``max_trial_delay``), which tells when the outage is over. A slice that
fails because of an outage is reported there, and its delivery handed back.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import msgspec
import structlog

from stemd._engine.leases import LeaseKeeper
from stemd._errors import TransportError
from stemd._health import Health, outage_of

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from stemd._broker.base import Broker, Delivery
    from stemd._engine.engine import Engine

__all__ = ["WorkerPool", "WorkerStats"]

log = structlog.get_logger("stemd.workers")


class WorkerStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a worker pool (``draining``: it takes no more deliveries)."""

    concurrency: int
    busy: int
    slices: int
    errors: int
    draining: bool = False


class WorkerPool:
    """``concurrency`` tasks, each taking a delivery, advancing its run, then acking it."""

    name = "workers"

    def __init__(
        self,
        engine: Engine,
        broker: Broker,
        queue: str,
        concurrency: int,
        *,
        health: Health | None = None,
        max_trial_delay: float = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.engine = engine
        self.broker = broker
        self.queue = queue
        self.concurrency = concurrency
        self._busy = 0
        # Deliveries taken and not yet acknowledged (or handed back), with the time of
        # their last heartbeat.
        self._in_flight: dict[int, tuple[Delivery, float]] = {}
        self._slices = 0
        self._errors = 0
        # The engine keeps its slices' leases from one task (its keeper, run here with
        # the workers), or from a task per slice.
        self.keeper = engine.leases if isinstance(engine.leases, LeaseKeeper) else None
        self._draining = False
        self._receiving: set[anyio.CancelScope] = set()
        self._settled: anyio.Event | None = None
        self.health = health
        self.max_trial_delay = max_trial_delay
        self._trial_delay = 0.0
        self._trial: anyio.Lock | None = None

    def statistics(self) -> WorkerStats:
        return WorkerStats(
            concurrency=self.concurrency,
            busy=self._busy,
            slices=self._slices,
            errors=self._errors,
            draining=self._draining,
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._trial = anyio.Lock()
        async with anyio.create_task_group() as tg:
            if self.keeper is not None:
                # One task keeps the leases of every slice these workers run.
                await tg.start(self.keeper.run)
            tg.start_soon(self._heartbeats)
            for _ in range(self.concurrency):
                tg.start_soon(self._work)
            task_status.started()

    async def drain(self, grace: float | None = None) -> int:
        """Take no more deliveries, and wait up to ``grace`` seconds (``None``: as long as
        it takes) for the slices in flight to finish and be acknowledged. Return how many
        are still in flight; they run on until the pool is cancelled. Draining is for good:
        the pool takes no delivery after it."""
        self._draining = True
        for scope in list(self._receiving):
            scope.cancel()
        with anyio.move_on_after(grace):
            while self._in_flight:
                self._settled = anyio.Event()
                await self._settled.wait()
        return len(self._in_flight)

    async def _heartbeats(self) -> None:
        """Tell the broker about slices running longer than their delivery's heartbeat."""
        while True:
            beats = [d.heartbeat or 0.0 for d, _ in self._in_flight.values()]
            tick = min((b for b in beats if b > 0), default=2.0) / 2
            await anyio.sleep(tick)
            now = time.monotonic()
            for key, (delivery, last) in list(self._in_flight.items()):
                beat = delivery.heartbeat
                if beat and now - last >= beat and key in self._in_flight:
                    self._in_flight[key] = (delivery, now)
                    try:
                        await delivery.in_progress()
                    except Exception as exc:
                        log.warning("in_progress failed", run_id=delivery.run_id, error=repr(exc))

    async def _work(self) -> None:
        # One scope per worker, cancelled by drain() only while the worker waits for a
        # delivery (it is in _receiving then): none to enter per delivery.
        with anyio.CancelScope() as idle:
            await self._work_in(idle)

    async def _work_in(self, idle: anyio.CancelScope) -> None:
        while (delivery := await self._receive(idle)) is not None:
            self._in_flight[id(delivery)] = (delivery, time.monotonic())
            try:
                if await self._admitted():
                    await self._advance(delivery)
                else:  # drained while degraded: hand it back unclaimed
                    with anyio.CancelScope(shield=True):
                        await self._settle(delivery, ack=False)
            finally:
                self._in_flight.pop(id(delivery), None)
                if self._settled is not None:
                    self._settled.set()

    async def _receive(self, idle: anyio.CancelScope) -> Delivery | None:
        """The next delivery, or ``None`` once the pool drains (which cancels ``idle``,
        the worker's scope, while the worker waits here)."""
        if self._draining:
            return None
        self._receiving.add(idle)
        try:
            delivery = await self.broker.receive(self.queue)
        finally:
            self._receiving.discard(idle)
        if idle.cancel_called:  # drained as it arrived: handed back, unclaimed
            with anyio.CancelScope(shield=True):
                await self._settle(delivery, ack=False)
            return None
        return delivery

    async def _admitted(self) -> bool:
        """Wait until this worker may claim the run it holds (:meth:`_admit`); ``False``
        when the pool drains meanwhile."""
        if self.health is None or self.health.ready:
            return True
        with anyio.CancelScope() as scope:
            self._receiving.add(scope)
            try:
                if not self._draining:
                    await self._admit()
                    return True
            finally:
                self._receiving.discard(scope)
        return False

    async def _admit(self) -> None:
        """While degraded, let one worker at a time through, ``_trial_delay`` apart."""
        health = self.health
        if health is None or health.ready or self._trial is None:
            self._trial_delay = 0.0
            return
        async with self._trial:
            self._trial_delay = min(self.max_trial_delay, max(0.5, self._trial_delay * 2))
            with anyio.move_on_after(self._trial_delay):
                await health.wait_ready()

    async def _advance(self, delivery: Delivery) -> None:
        if self.keeper is not None and self.keeper.holds(delivery.run_id):
            # A slice of this run runs here already (a sweep that read its lease against
            # a clock that jumped, a duplicate task): never take a run from ourselves.
            await delivery.ack()
            return
        self._busy += 1
        try:
            # A claim made for the worker is spent by this slice, whatever comes of it: a
            # delivery handed back after it goes out without it.
            claim, delivery.claim = delivery.claim, None
            await self.engine.advance(delivery.run_id, claim)
            self._slices += 1
        except Exception as exc:
            # A store or broker failure: the run stays in the store and the sweeper
            # or a redelivery picks it up again. Never let one run kill the worker.
            self._errors += 1
            dependency = outage_of(exc)
            if dependency is not None and self.health is not None:
                self.health.report(self.name, dependency, exc)
                log.debug("slice stopped by an outage", run_id=delivery.run_id, error=repr(exc))
            else:
                log.exception("slice failed", run_id=delivery.run_id, error=repr(exc))
            with anyio.CancelScope(shield=True):
                await self._settle(delivery, ack=False)
            return
        finally:
            self._busy -= 1
        if self.health is not None:
            self.health.clear(self.name)
        await self._settle(delivery, ack=True)

    async def _settle(self, delivery: Delivery, *, ack: bool) -> None:
        """Ack (or hand back) ``delivery``; when the broker is away, leave it to its
        redelivery (the run's state is in the store either way)."""
        try:
            await (delivery.ack() if ack else delivery.nak(1.0))
        except TransportError as exc:
            log.debug("delivery not settled", run_id=delivery.run_id, error=repr(exc))
