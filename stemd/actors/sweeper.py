"""The sweeper: re-enqueues runs that are runnable but that nobody is working on."""

from __future__ import annotations

import anyio
import msgspec
from anyio.abc import TaskStatus

from stemd.broker.base import Broker
from stemd.engine.engine import Engine

__all__ = ["Sweeper", "SweeperStats"]


class SweeperStats(msgspec.Struct, frozen=True, kw_only=True):
    """How much the sweeper found."""

    sweeps: int
    requeued: int


class Sweeper:
    """Every ``interval`` seconds (and once at start), enqueue each runnable run with no
    live lease: after a crash between commit and enqueue, a lost message, an expired lease
    of a dead worker, or a run made runnable by another process. Enqueueing is idempotent,
    so sweeping is always safe."""

    name = "sweeper"

    def __init__(self, engine: Engine, broker: Broker, interval: float, batch: int = 1000) -> None:
        self.engine = engine
        self.broker = broker
        self.interval = interval
        self.batch = batch
        self._sweeps = 0
        self._requeued = 0

    def statistics(self) -> SweeperStats:
        return SweeperStats(sweeps=self._sweeps, requeued=self._requeued)

    async def sweep(self) -> int:
        """One pass; returns how many runs were enqueued."""
        found = await self.engine.store.runnable(self.engine.clock.now(), self.batch)
        for run_id, queue in found:
            await self.broker.enqueue(run_id, queue)
        self._sweeps += 1
        self._requeued += len(found)
        return len(found)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await self.sweep()
        task_status.started()
        while True:
            await self.engine.clock.sleep(self.interval)
            await self.sweep()
