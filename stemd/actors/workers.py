"""The worker pool: N concurrent executors fed by the broker.

A delivery acknowledged late is handed to someone else (JetStream's ``ack_wait``): a
delivery with a ``heartbeat`` attribute (seconds) gets ``in_progress()`` that often while
its run is being advanced, from one ticker task for the whole pool.
"""

from __future__ import annotations

import time

import anyio
import msgspec
import structlog
from anyio.abc import TaskStatus

from stemd.broker.base import Broker, Delivery
from stemd.engine.engine import Engine
from stemd.engine.leases import LeaseKeeper

__all__ = ["WorkerPool", "WorkerStats"]

log = structlog.get_logger("stemd.workers")


class WorkerStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a worker pool."""

    concurrency: int
    busy: int
    slices: int
    errors: int


class WorkerPool:
    """``concurrency`` tasks, each taking a delivery, advancing its run, then acking it."""

    name = "workers"

    def __init__(self, engine: Engine, broker: Broker, queue: str, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.engine = engine
        self.broker = broker
        self.queue = queue
        self.concurrency = concurrency
        self._busy = 0
        self._in_flight: dict[int, tuple[Delivery, float]] = {}
        self._slices = 0
        self._errors = 0
        # The engine keeps its slices' leases from one task (its keeper, run here with
        # the workers), or from a task per slice.
        self.keeper = engine.leases if isinstance(engine.leases, LeaseKeeper) else None

    def statistics(self) -> WorkerStats:
        return WorkerStats(
            concurrency=self.concurrency, busy=self._busy, slices=self._slices, errors=self._errors
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            if self.keeper is not None:
                # One task keeps the leases of every slice these workers run.
                await tg.start(self.keeper.run)
            tg.start_soon(self._heartbeats)
            for _ in range(self.concurrency):
                tg.start_soon(self._work)
            task_status.started()

    async def _heartbeats(self) -> None:
        """Tell the broker about slices running longer than their delivery's heartbeat."""
        while True:
            beats = [getattr(d, "heartbeat", None) or 0.0 for d, _ in self._in_flight.values()]
            tick = min((b for b in beats if b > 0), default=2.0) / 2
            await anyio.sleep(tick)
            now = time.monotonic()
            for key, (delivery, last) in list(self._in_flight.items()):
                beat = getattr(delivery, "heartbeat", None)
                if beat and now - last >= beat and key in self._in_flight:
                    self._in_flight[key] = (delivery, now)
                    try:
                        await delivery.in_progress()
                    except Exception as exc:
                        log.warning("in_progress failed", run_id=delivery.run_id, error=repr(exc))

    async def _work(self) -> None:
        while True:
            delivery = await self.broker.receive(self.queue)
            self._busy += 1
            self._in_flight[id(delivery)] = (delivery, time.monotonic())
            try:
                await self.engine.advance(delivery.run_id)
                self._slices += 1
            except Exception as exc:
                # A store or broker failure: the run stays in the store and the sweeper
                # or a redelivery picks it up again. Never let one run kill the worker.
                self._errors += 1
                log.exception("slice failed", run_id=delivery.run_id, error=repr(exc))
                with anyio.CancelScope(shield=True):
                    await delivery.nak(1.0)
                continue
            finally:
                self._busy -= 1
                self._in_flight.pop(id(delivery), None)
            await delivery.ack()
