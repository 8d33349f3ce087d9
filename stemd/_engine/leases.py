"""Keeping a slice's lease while it runs: two strategies, one chosen at construction.

- :class:`LeaseKeeper`: one task renewing the leases of every slice this process runs (a
  worker pool runs it). Most slices end long before their first renewal, so a task per
  slice would be pure cost on the hot path: the keeper holds the slices in flight and
  renews, every ``lease/6`` seconds, those not renewed for ``lease/3``.
- :class:`SliceLeases`: a renewal task per slice, every ``lease/3`` seconds, for an engine
  driven directly (no worker pool, so no keeper task).

Either way a refused renewal cancels the slice (its writes would be refused anyway).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio
import structlog

from stemd._errors import LeaseLost

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime

    from anyio.abc import TaskStatus

    from stemd._clock import Clock
    from stemd._store.base import Store

__all__ = ["Held", "LeaseKeeper", "LeaseRenewal", "SliceLeases"]

log = structlog.get_logger("stemd.leases")

T = TypeVar("T")


class LeaseRenewal(Protocol):
    """How the engine keeps the lease of a slice while it runs."""

    async def keep(self, run_id: str, token: int, work: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``work()`` while the lease of ``run_id`` (claimed with ``token``) is kept;
        return its result, or ``None`` when the lease was lost and ``work`` cancelled."""
        ...

    def holds(self, run_id: str) -> bool:
        """Whether a slice of ``run_id`` runs here now."""
        ...


class Held:
    """A slice whose lease is being kept."""

    __slots__ = ("checked", "lost", "renewed", "run_id", "scope", "token")

    def __init__(self, run_id: str, token: int, scope: anyio.CancelScope, now: datetime) -> None:
        self.run_id = run_id
        self.token = token
        self.scope = scope
        self.renewed = now
        self.checked = now
        self.lost = False


class LeaseKeeper:
    """Keeps the leases of the slices in flight from one task, :meth:`run` (see the module
    docstring). Its slices are renewed only while that task runs.

    With ``check`` (a session keeps the runs, and claims carry a long ``lease``), a slice
    not renewed for ``check/3`` seconds is checked by a read instead: a run whose token
    moved on (a cancel, a rewind, a takeover) has its slice cancelled within about
    ``check/3`` seconds, at no write."""

    name = "leases"

    def __init__(
        self, store: Store, clock: Clock, lease: float, *, check: float | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.lease = lease
        self.check = check
        self.tick = min(lease / 6, check / 3) if check else lease / 6
        self._held: set[Held] = set()
        # How many of the slices in _held run each run id (holds() without a scan).
        self._runs: dict[str, int] = {}
        self._running = False

    @property
    def running(self) -> bool:
        """Whether the renewing task runs."""
        return self._running

    def holds(self, run_id: str) -> bool:
        """Whether a slice of ``run_id`` runs here now (known without any clock: a
        wall-clock jump never makes this process take a run from itself)."""
        return run_id in self._runs

    def lose_all(self) -> int:
        """Cancel every slice in flight: their runs were taken over (this process's
        session was ended by a peer). Return how many."""
        held = list(self._held)
        for one in held:
            one.lost = True
            one.scope.cancel()
        return len(held)

    async def keep(self, run_id: str, token: int, work: Callable[[], Awaitable[T]]) -> T | None:
        result: T | None = None
        runs = self._runs
        with anyio.CancelScope() as scope:
            held = Held(run_id, token, scope, self.clock.now())
            self._held.add(held)
            runs[run_id] = runs.get(run_id, 0) + 1
            try:
                result = await work()
            finally:
                self._held.discard(held)
                if runs[run_id] == 1:
                    del runs[run_id]
                else:
                    runs[run_id] -= 1
        return result

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._running = True
        try:
            task_status.started()
            while True:
                await self.clock.sleep(self.tick)
                await self.renew_due()
        finally:
            self._running = False

    async def renew_due(self) -> None:
        """Renew every held lease not renewed for a third of the lease."""
        now = self.clock.now()
        every = self.lease / 3
        for held in list(self._held):
            if held not in self._held:
                continue
            if (now - held.renewed).total_seconds() < every:
                if self.check and (now - held.checked).total_seconds() >= self.check / 3:
                    await self._verify(held, now)
                continue
            try:
                await self.store.renew_lease(held.run_id, held.token, now, self.lease)
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

    async def _verify(self, held: Held, now: datetime) -> None:
        held.checked = now
        try:
            rec = await self.store.get_run(held.run_id)
        except Exception as exc:
            log.warning("lease check failed", run_id=held.run_id, error=repr(exc))
            return
        if held in self._held and (rec is None or rec.token != held.token):
            log.warning("lease lost while running", run_id=held.run_id)
            held.lost = True
            held.scope.cancel()


class SliceLeases:
    """Renews each slice's lease from a task of its own (see the module docstring)."""

    def __init__(self, store: Store, clock: Clock, lease: float) -> None:
        self.store = store
        self.clock = clock
        self.lease = lease
        self._runs: collections.Counter[str] = collections.Counter()

    def holds(self, run_id: str) -> bool:
        """Whether a slice of ``run_id`` runs here now."""
        return run_id in self._runs

    async def keep(self, run_id: str, token: int, work: Callable[[], Awaitable[T]]) -> T | None:
        result: T | None = None
        self._runs[run_id] += 1
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew, run_id, token, tg.cancel_scope, name="keep-lease")
                result = await work()
                tg.cancel_scope.cancel()
        finally:
            self._runs[run_id] -= 1
            if not self._runs[run_id]:
                del self._runs[run_id]
        return result

    async def _renew(self, run_id: str, token: int, scope: anyio.CancelScope) -> None:
        interval = self.lease / 3
        while True:
            await self.clock.sleep(interval)
            try:
                await self.store.renew_lease(run_id, token, self.clock.now(), self.lease)
            except LeaseLost:
                log.warning("lease lost while running", run_id=run_id)
                scope.cancel()
                return
