"""Runs this process claimed and could neither commit nor give back while the store was
away: they stay RUNNING under its live session, so no peer takes them; the session's
upkeep gives them back once the store answers (a part of :class:`~stemd._engine.engine.Engine`).

A claim that failed with an outage (:func:`~stemd._health.outage_of`) may have been written
all the same (a compare-and-set whose answer was lost): its run would stay RUNNING under
this process's live session, taken by nobody, until its claim's lease ran out (an hour
with sessions). Such a run is an *unsure claim* until the store answers: then, if it is
RUNNING under this process's owner and no slice of it runs here, it is given back at the
token read (a conditional commit: a run that moved on meanwhile is left alone)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from stemd._errors import LeaseLost
from stemd._health import outage_of
from stemd._model import RunStatus
from stemd._store.base import Release

if TYPE_CHECKING:
    import collections

    from stemd._clock import Clock
    from stemd._engine.leases import LeaseRenewal
    from stemd._store.base import Claim, CommitResult, Store

__all__ = ["Orphans"]

log = structlog.get_logger("stemd.engine")


class Orphans:
    """``orphans`` (run id -> token) and unsure claims (run ids), and their release."""

    store: Store
    clock: Clock
    owner: str
    lease: float
    leases: LeaseRenewal
    orphans: dict[str, int]
    # Runs whose claim failed with an outage and may have been written, and how many reads
    # found them not held by this owner.
    unsure: dict[str, int]
    # How many claims of each run are being made here now.
    claiming: collections.Counter[str]

    async def _claim(self, run_id: str) -> Claim | None:
        """Claim ``run_id`` for this process; remember it as an unsure claim when the
        claim fails with an outage (it may have been written)."""
        self.claiming[run_id] += 1
        try:
            claim = await self.store.claim(run_id, self.owner, self.clock.now(), self.lease)
        except Exception as exc:
            if outage_of(exc) is not None:
                self.unsure[run_id] = 0
            raise
        finally:
            self.claiming[run_id] -= 1
            if not self.claiming[run_id]:
                del self.claiming[run_id]
        if claim is not None:
            self.unsure.pop(run_id, None)  # it was not held by an unsure claim
        return claim

    async def _after(self, result: CommitResult) -> None:
        raise NotImplementedError  # pragma: no cover - the engine's

    async def _give_back(self, run_id: str, token: int) -> None:
        """Release the slice ``token`` of ``run_id`` (runnable again, enqueued); forget it
        as an orphan once released or fenced out. A store error leaves it an orphan."""
        try:
            result = await self.store.commit(run_id, token, Release(), self.clock.now())
        except LeaseLost:
            self.orphans.pop(run_id, None)
            return
        except Exception as exc:
            log.warning("slice not given back; retrying later", run_id=run_id, error=repr(exc))
            return
        self.orphans.pop(run_id, None)
        await self._after(result)

    async def release_orphans(self) -> int:
        """Give back the runs this process claimed and could not commit or release while
        the store was away; return how many are still waiting for it."""
        for run_id, token in list(self.orphans.items()):
            await self._give_back(run_id, token)
        for run_id in list(self.unsure):
            await self._settle_unsure(run_id)
        return len(self.orphans) + len(self.unsure)

    async def _settle_unsure(self, run_id: str) -> None:
        """Give back the run of an unsure claim if that claim was written (the run is
        RUNNING under this owner, and no slice of it runs or is being claimed here);
        forget it once the store says either way: given back, or found not held by this
        owner by two reads (one might come from a replica that lags behind the
        claim). A store error keeps it for later."""
        try:
            rec = await self.store.get_run(run_id)
        except Exception as exc:
            log.warning("unsure claim not checked; retrying later", run_id=run_id, error=repr(exc))
            return
        if rec is None or rec.status is not RunStatus.RUNNING or rec.lease_owner != self.owner:
            if run_id in self.unsure:
                self.unsure[run_id] += 1
                if self.unsure[run_id] >= 2:
                    del self.unsure[run_id]  # not written, or moved on since
            return
        if run_id not in self.unsure or run_id in self.claiming or self.leases.holds(run_id):
            return  # a slice of it runs (or is being claimed) here: it is that slice's
        log.info("giving back a run claimed as the store went away", run_id=run_id)
        del self.unsure[run_id]
        self.orphans[run_id] = rec.token
        await self._give_back(run_id, rec.token)
