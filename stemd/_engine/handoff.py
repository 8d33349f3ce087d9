"""Starting a run where a worker of this process waits for one (a part of
:class:`~stemd._engine.engine.Engine`): the run is created already claimed by this
process and handed to that worker with its claim, in one write instead of a create and a
claim, and with no trip through the queue.

It is done only when the broker can hand a claim over
(:class:`~stemd._broker.base.HandOff`) and its workers would take more runs of the run's
queue now than starts are being handed to them, for a workflow without limits (a limited
run takes its slots as it is claimed) started without a deduplication key, and the
process is not degraded (its workers take nothing then).

Nothing is less durable: the run is written, RUNNING under this process's session (its
lease owner), before any step runs. If the process dies before its worker commits, the
session's end gives the run back (a takeover, as for any claim); a create whose answer
was lost with the store is an *unsure claim*, given back once the store answers if it was
written (:mod:`~stemd._engine.orphans`). A run of a paused workflow is created paused: it
is given back at once, to wait for the resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stemd._engine.limits import is_limited
from stemd._engine.orphans import Orphans
from stemd._health import outage_of
from stemd._store.base import Claim
from stemd._store.transitions import apply_claim

if TYPE_CHECKING:
    import collections

    from stemd._broker.base import Broker, HandOff
    from stemd._health import Health
    from stemd._store.base import RunRecord

__all__ = ["HandOffs"]


class HandOffs(Orphans):
    """The creation of a run, claimed and handed to a waiting worker when it can be."""

    broker: Broker | None
    health: Health | None
    # Starts being handed to this process's workers now, by queue.
    handing: collections.Counter[str]
    # The broker as a HandOff (None: it cannot), looked at once by the engine: a runtime
    # protocol's isinstance() reads every member, too dear for each start.
    hand_to: HandOff | None

    def runs_here(self, run_id: str) -> bool:
        """Whether ``run_id`` is in this process's hands now: a slice of it runs here, or
        it waits in the in-process broker's queue (its end is then published here)."""
        if self.leases.holds(run_id):
            return True
        return self.broker is not None and self.broker.queued(run_id)

    async def _create(self, record: RunRecord) -> tuple[RunRecord, bool, bool]:
        """Create ``record``'s run: the run as stored, whether it was created, and
        whether it was handed to a worker claimed (nothing more to enqueue then)."""
        broker = self.hand_to
        queue = record.queue
        health = self.health
        if (
            broker is None
            or (health is not None and not health.ready)
            or broker.room(queue) <= self.handing[queue]
            or is_limited(self.store, record.workflow)
        ):
            stored, created = await self.store.create_run(record)
            return stored, created, False
        claimed = apply_claim(record, self.owner, record.created_at, self.lease)
        self.handing[queue] += 1
        try:
            stored, created = await self.store.create_run(claimed)
        except Exception as exc:
            if outage_of(exc) is not None:
                self.unsure[record.run_id] = 0  # it may be written, claimed here
            raise
        finally:
            self.handing[queue] -= 1
        if not created or stored.lease_owner != self.owner or stored.token != claimed.token:
            return stored, created, False
        if stored.paused:
            # Its workflow is paused: nothing runs before the resume.
            self.orphans[stored.run_id] = stored.token
            await self._give_back(stored.run_id, stored.token)
            return stored, True, True
        broker.hand_off(Claim(token=stored.token, record=stored, checkpoints=[]))
        return stored, True, True
