"""An in-memory store: for users' unit tests and the engine's fast tests.

Nothing survives the process. Every method runs without awaiting in between, so each is
atomic under the event loop.
"""

from __future__ import annotations

import copy
import heapq
from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import msgspec

from stemd._errors import LeaseLost
from stemd._model import RunStatus
from stemd._store.base import (
    Checkpoint,
    Claim,
    CommitResult,
    Complete,
    FireResult,
    Outcome,
    RunRecord,
    Suspend,
    WorkflowInfo,
)
from stemd._store.transitions import (
    apply_cancel,
    apply_claim,
    apply_event,
    apply_fire,
    apply_outcome,
    apply_rewind,
    is_runnable,
    rewind_cut,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["MemoryStore"]


class MemoryStore:
    """A :class:`~stemd._store.base.Store` held in dictionaries."""

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}
        # Per run: checkpoint name → (value, when it was written), in write order.
        self._checkpoints: dict[str, dict[str, tuple[bytes, datetime]]] = {}
        self._by_topic: defaultdict[str, dict[str, None]] = defaultdict(dict)
        self._by_child: defaultdict[str, set[str]] = defaultdict(set)
        self._live: set[str] = set()
        self._timers: list[tuple[datetime, str]] = []
        self._order: dict[str, int] = {}
        self._seq = 0
        self._workflows: dict[str, WorkflowInfo] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- index upkeep --------------------------------------------------------------------

    def _put(self, rec: RunRecord) -> None:
        old = self._runs.get(rec.run_id)
        if old is not None:
            if old.wait_topic is not None:
                self._by_topic[old.wait_topic].pop(rec.run_id, None)
                if not self._by_topic[old.wait_topic]:
                    del self._by_topic[old.wait_topic]
            if old.wait_child is not None:
                self._by_child[old.wait_child].discard(rec.run_id)
                if not self._by_child[old.wait_child]:
                    del self._by_child[old.wait_child]
        self._runs[rec.run_id] = rec
        if rec.wait_topic is not None and rec.status is RunStatus.SUSPENDED:
            self._by_topic[rec.wait_topic][rec.run_id] = None
        if rec.wait_child is not None and rec.status is RunStatus.SUSPENDED:
            self._by_child[rec.wait_child].add(rec.run_id)
        if rec.status in (RunStatus.PENDING, RunStatus.RUNNING):
            self._live.add(rec.run_id)
        else:
            self._live.discard(rec.run_id)
        if rec.timer_at is not None and (old is None or old.timer_at != rec.timer_at):
            heapq.heappush(self._timers, (rec.timer_at, rec.run_id))

    def _delete(self, run_id: str) -> None:
        rec = self._runs.pop(run_id, None)
        self._checkpoints.pop(run_id, None)
        self._order.pop(run_id, None)
        self._live.discard(run_id)
        if rec is not None and rec.wait_topic is not None:
            self._by_topic.get(rec.wait_topic, {}).pop(run_id, None)

    def _owned(self, run_id: str, token: int) -> RunRecord:
        rec = self._runs.get(run_id)
        if rec is None or rec.token != token or rec.status is not RunStatus.RUNNING:
            raise LeaseLost(f"run {run_id} is no longer owned by this worker")
        return rec

    def _wake_parents(self, child_id: str, now: datetime) -> tuple[str, ...]:
        woken = []
        for parent_id in sorted(self._by_child.get(child_id, ())):
            parent = self._runs.get(parent_id)
            if parent is not None and parent.status is RunStatus.SUSPENDED:
                self._put(apply_event(parent, now))
                woken.append(parent_id)
        return tuple(woken)

    # -- the protocol --------------------------------------------------------------------

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        existing = self._runs.get(record.run_id)
        if existing is not None:
            return copy.copy(existing), False
        rec = copy.copy(record)
        self._seq += 1
        self._order[rec.run_id] = self._seq
        self._checkpoints[rec.run_id] = {}
        self._put(rec)
        return copy.copy(rec), True

    async def get_run(self, run_id: str) -> RunRecord | None:
        rec = self._runs.get(run_id)
        return copy.copy(rec) if rec is not None else None

    async def get_checkpoints(self, run_id: str) -> list[Checkpoint]:
        return [Checkpoint(n, v, at) for n, (v, at) in self._checkpoints.get(run_id, {}).items()]

    async def claim(self, run_id: str, owner: str, now: datetime, lease: float) -> Claim | None:
        rec = self._runs.get(run_id)
        if rec is None or not is_runnable(rec, now):
            return None
        new = apply_claim(rec, owner, now, lease)
        self._put(new)
        return Claim(
            token=new.token, record=copy.copy(new), checkpoints=await self.get_checkpoints(run_id)
        )

    async def renew_lease(self, run_id: str, token: int, now: datetime, lease: float) -> None:
        rec = self._owned(run_id, token)

        rec.lease_expires_at = now + timedelta(seconds=lease)
        rec.updated_at = now

    async def save_checkpoint(
        self, run_id: str, token: int, checkpoint: Checkpoint, now: datetime
    ) -> None:
        rec = self._owned(run_id, token)
        self._checkpoints[run_id][checkpoint.name] = (checkpoint.value, now)
        rec.updated_at = now

    async def commit(
        self, run_id: str, token: int, outcome: Outcome, now: datetime
    ) -> CommitResult:
        rec = self._owned(run_id, token)
        child_ended = False
        if isinstance(outcome, Suspend) and outcome.wait_child is not None:
            child = self._runs.get(outcome.wait_child)
            child_ended = child is None or child.status.is_terminal
        if isinstance(outcome, (Complete, Suspend)):
            store = self._checkpoints[run_id]
            for cp in outcome.checkpoints:
                store[cp.name] = (cp.value, now)
        new = apply_outcome(rec, outcome, now, child_ended=child_ended)
        self._put(new)
        woken = self._wake_parents(run_id, now) if new.status.is_terminal else ()
        return CommitResult(record=copy.copy(new), woken=woken)

    async def deliver_event(
        self, topic: str, value: bytes, now: datetime, limit: int = 1000
    ) -> list[str]:
        resumed = []
        for run_id in list(self._by_topic.get(topic, ()))[:limit]:
            rec = self._runs[run_id]
            if rec.wait_key is not None:
                self._checkpoints[run_id][rec.wait_key] = (value, now)
            self._put(apply_event(rec, now))
            resumed.append(run_id)
        return resumed

    async def due_timers(self, until: datetime, limit: int) -> list[tuple[datetime, str]]:
        # The heap holds every timer ever set; an entry is live only while it is still its
        # run's timer. Pop in order, dropping dead entries and duplicates for good (a run's
        # timer may come back to an earlier value), then put the live ones back.
        heap = self._timers
        out: list[tuple[datetime, str]] = []
        seen: set[str] = set()
        while heap and len(out) < limit and heap[0][0] <= until:
            at, run_id = heapq.heappop(heap)
            rec = self._runs.get(run_id)
            if rec is None or rec.timer_at != at or run_id in seen:
                continue
            seen.add(run_id)
            out.append((at, run_id))
        for entry in out:
            heapq.heappush(heap, entry)
        return out

    async def fire_timer(self, run_id: str, now: datetime, timeout_value: bytes) -> FireResult:
        rec = self._runs.get(run_id)
        if rec is None:
            return FireResult(action="none")
        action, new, _ = apply_fire(rec, now)
        if action == "none":
            return FireResult(action="none", record=copy.copy(rec))
        if action == "deleted" or new is None:
            self._delete(run_id)
            return FireResult(action="deleted")
        if action == "woken" and new.resume_key is not None:
            self._checkpoints[run_id][new.resume_key] = (timeout_value, now)
        self._put(new)
        woken = self._wake_parents(run_id, now) if action == "cancelled" else ()
        return FireResult(action=action, record=copy.copy(new), woken=woken)

    async def cancel(self, run_id: str, reason: str, now: datetime) -> CommitResult | None:
        rec = self._runs.get(run_id)
        if rec is None or rec.status.is_terminal:
            return None
        new = apply_cancel(rec, reason, now)
        self._put(new)
        return CommitResult(record=copy.copy(new), woken=self._wake_parents(run_id, now))

    async def rewind(self, run_id: str, step: str, now: datetime) -> RunRecord | None:
        rec = self._runs.get(run_id)
        if rec is None:
            return None
        store = self._checkpoints[run_id]
        for name in rewind_cut(list(store), step):
            del store[name]
        new = apply_rewind(rec, now)
        self._put(new)
        return copy.copy(new)

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        out: list[RunRecord] = []
        for run_id in sorted(self._order, key=self._order.__getitem__, reverse=True):
            rec = self._runs[run_id]
            if workflow is not None and rec.workflow != workflow:
                continue
            if status is not None and rec.status is not status:
                continue
            if parent_run_id is not None and rec.parent_run_id != parent_run_id:
                continue
            out.append(copy.copy(rec))
            if len(out) >= limit:
                break
        return out

    async def runs_waiting_on(self, topic: str, limit: int = 1000) -> list[RunRecord]:
        ids = list(self._by_topic.get(topic, ()))[:limit]
        return [copy.copy(self._runs[i]) for i in ids]

    async def runnable(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        out = []
        for run_id in self._live:
            rec = self._runs[run_id]
            if is_runnable(rec, now):
                out.append((run_id, rec.queue))
                if len(out) >= limit:
                    break
        return out

    async def register_workflows(self, workflows: Sequence[WorkflowInfo], now: datetime) -> None:
        for info in workflows:
            self._workflows[info.name] = msgspec.structs.replace(info, registered_at=now)

    async def registered_workflows(self) -> list[WorkflowInfo]:
        return [self._workflows[name] for name in sorted(self._workflows)]
