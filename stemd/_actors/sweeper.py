"""The sweeper: re-enqueues runs that are runnable but that nobody is working on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec

from stemd._store.base import ExternalChanges

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from stemd._broker.base import Broker
    from stemd._engine.engine import Engine

__all__ = ["Sweeper", "SweeperStats"]


class SweeperStats(msgspec.Struct, frozen=True, kw_only=True):
    """How much the sweeper found."""

    sweeps: int
    requeued: int
    # Sweeps prompted by another process's writes (stores shared between processes).
    external: int = 0


class Sweeper:
    """Every ``interval`` seconds (and once at start), enqueue each runnable run with no
    live lease: after a crash between commit and enqueue, a lost message, an expired lease
    of a dead worker, or a run made runnable by another process. Enqueueing is idempotent,
    so sweeping is always safe.

    When the store is shared with other processes (:class:`ExternalChanges`, e.g. SQLite),
    the sweeper also polls it every ``watch_interval`` seconds of real time and sweeps as
    soon as another process has written, so that their new runs start promptly."""

    name = "sweeper"

    def __init__(
        self,
        engine: Engine,
        broker: Broker,
        interval: float,
        batch: int = 1000,
        *,
        watch_interval: float = 0.1,
    ) -> None:
        self.engine = engine
        self.broker = broker
        self.interval = interval
        self.batch = batch
        self.watch_interval = watch_interval
        self._sweeps = 0
        self._requeued = 0
        self._external = 0

    def statistics(self) -> SweeperStats:
        return SweeperStats(sweeps=self._sweeps, requeued=self._requeued, external=self._external)

    async def sweep(self) -> int:
        """One pass; returns how many runs were enqueued."""
        found = await self.engine.store.runnable(self.engine.clock.now(), self.batch)
        broker = self.broker
        # A run queued in this process's own lane is on its way to a worker here.
        todo = [(run_id, queue) for run_id, queue in found if not broker.queued(run_id)]
        for run_id, queue in todo:
            await broker.enqueue(run_id, queue)
        self._sweeps += 1
        self._requeued += len(todo)
        return len(todo)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        store = self.engine.store
        async with anyio.create_task_group() as tg:
            if isinstance(store, ExternalChanges):
                seen = await store.external_changes()
                tg.start_soon(self._watch, store, seen)
            await self.sweep()
            task_status.started()
            while True:
                await self.engine.clock.sleep(self.interval)
                await self.sweep()

    async def _watch(self, store: ExternalChanges, seen: int) -> None:
        # Real time, not the engine's clock: other processes write in real time.
        while True:
            await anyio.sleep(self.watch_interval)
            changes = await store.external_changes()
            if changes != seen:
                seen = changes
                self._external += 1
                await self.sweep()
