"""One task renewing the leases of every slice this process runs.

A slice used to start a task group and a renewal task of its own; most slices end long
before their first renewal, so that was pure cost on the hot path. The keeper holds the
slices in flight and renews, every ``lease/6`` seconds, those not renewed for ``lease/3``;
a refused renewal cancels that slice (its writes would be refused anyway).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import anyio
import structlog
from anyio.abc import TaskStatus

from stemd.errors import LeaseLost

if TYPE_CHECKING:
    from stemd.engine.engine import Engine

__all__ = ["Held", "LeaseKeeper"]

log = structlog.get_logger("stemd.leases")


class Held:
    """A slice whose lease is being kept."""

    __slots__ = ("lost", "renewed", "run_id", "scope", "token")

    def __init__(self, run_id: str, token: int, scope: anyio.CancelScope, now: datetime) -> None:
        self.run_id = run_id
        self.token = token
        self.scope = scope
        self.renewed = now
        self.lost = False


class LeaseKeeper:
    """Keeps the leases of the slices in flight (see the module docstring)."""

    name = "leases"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._held: set[Held] = set()
        self.running = False

    def hold(self, run_id: str, token: int, scope: anyio.CancelScope) -> Held:
        held = Held(run_id, token, scope, self.engine.clock.now())
        self._held.add(held)
        return held

    def drop(self, held: Held) -> None:
        self._held.discard(held)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        engine = self.engine
        self.running = True
        try:
            task_status.started()
            while True:
                await engine.clock.sleep(engine.lease / 6)
                await self.renew_due()
        finally:
            self.running = False

    async def renew_due(self) -> None:
        """Renew every held lease not renewed for a third of the lease."""
        engine = self.engine
        now = engine.clock.now()
        every = engine.lease / 3
        for held in list(self._held):
            if held not in self._held or (now - held.renewed).total_seconds() < every:
                continue
            try:
                await engine.store.renew_lease(held.run_id, held.token, now, engine.lease)
            except LeaseLost:
                log.warning("lease lost while running", run_id=held.run_id)
                held.lost = True
                held.scope.cancel()
            except Exception as exc:
                # An outage: keep trying; if it lasts past the lease, another owner may
                # take the run over and this slice's writes will be refused.
                log.warning("lease renewal failed", run_id=held.run_id, error=repr(exc))
            else:
                held.renewed = now
