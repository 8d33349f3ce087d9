"""An in-memory store: for users' unit tests and the engine's fast tests.

Nothing survives the process. Every method runs without awaiting in between, so each is
atomic under the event loop.
"""

from __future__ import annotations

import bisect
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
    Delivery,
    Event,
    FireResult,
    Outcome,
    Page,
    RunRecord,
    SendResult,
    Suspend,
    WorkflowInfo,
    cursor_of,
    topics_of,
)
from stemd._store.memory_extras import MemoryPausedWorkflows, MemorySessions
from stemd._store.memory_slots import MemorySlots
from stemd._store.schedules import MemorySchedules
from stemd._store.transitions import (
    apply_cancel,
    apply_claim,
    apply_delivery,
    apply_event,
    apply_fire,
    apply_hold,
    apply_outcome,
    apply_pause,
    apply_pause_stop,
    apply_resume,
    apply_rewind,
    choose_event,
    created_paused,
    is_runnable,
    rewind_cut,
    timeout_value_of,
    waits_for_events,
    waits_on,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stemd._store.base import TimeoutValue
    from stemd._store.sessions import SessionRecord

__all__ = ["MemoryStore"]


class MemoryStore(MemorySchedules, MemorySlots, MemorySessions, MemoryPausedWorkflows):
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
        # Topic events: per topic, (position, value, expires at) in position order.
        self._event_seq = 0
        self._events: dict[str, list[tuple[int, bytes, datetime]]] = {}
        # Mailboxes: per run, its messages not taken yet (topic, value) in send order, and
        # every key ever sent to it.
        self._mail: dict[str, list[tuple[str, bytes]]] = {}
        self._mail_keys: dict[str, set[str]] = {}
        self._sessions: dict[str, SessionRecord] = {}
        self._paused_workflows: set[str] = set()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- index upkeep --------------------------------------------------------------------

    def _put(self, rec: RunRecord) -> None:
        old = self._runs.get(rec.run_id)
        if old is not None:
            for topic in topics_of(old):
                self._by_topic[topic].pop(rec.run_id, None)
                if not self._by_topic[topic]:
                    del self._by_topic[topic]
            if old.wait_child is not None:
                self._by_child[old.wait_child].discard(rec.run_id)
                if not self._by_child[old.wait_child]:
                    del self._by_child[old.wait_child]
        self._runs[rec.run_id] = rec
        if rec.status is RunStatus.SUSPENDED:
            for topic in topics_of(rec):
                self._by_topic[topic][rec.run_id] = None
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
        self._mail.pop(run_id, None)
        self._mail_keys.pop(run_id, None)
        if rec is not None:
            for topic in topics_of(rec):
                self._by_topic.get(topic, {}).pop(run_id, None)

    def _owned(self, run_id: str, token: int) -> RunRecord:
        rec = self._runs.get(run_id)
        if rec is None or rec.token != token or rec.status is not RunStatus.RUNNING:
            raise LeaseLost(f"run {run_id} is no longer owned by this worker")
        return rec

    def _wake_parents(self, child_id: str, now: datetime) -> tuple[str, ...]:
        woken = []
        for parent_id in sorted(self._by_child.get(child_id, ())):
            parent = self._runs.get(parent_id)
            if parent is not None and parent.status is RunStatus.SUSPENDED and not parent.paused:
                self._put(apply_event(parent, now))
                woken.append(parent_id)
        return tuple(woken)

    # -- the protocol --------------------------------------------------------------------

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        existing = self._runs.get(record.run_id)
        if existing is not None:
            return copy.copy(existing), False
        rec = copy.copy(record)
        if rec.workflow in self._paused_workflows:
            rec = created_paused(rec)
        rec.event_floor = self._event_seq
        self._seq += 1
        self._order[rec.run_id] = self._seq
        self._checkpoints[rec.run_id] = {}
        self._put(rec)
        return copy.copy(rec), True

    async def fork_run(
        self, record: RunRecord, checkpoints: Sequence[Checkpoint]
    ) -> tuple[RunRecord, bool]:
        stored, created = await self.create_run(record)
        if created:
            at = record.created_at
            self._checkpoints[record.run_id] = {cp.name: (cp.value, at) for cp in checkpoints}
        return stored, created

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
        if rec.paused:
            self._put(apply_pause_stop(rec, now))
            raise LeaseLost(f"run {run_id} is paused: it stops at this checkpoint")

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
        if waits_for_events(new) and not new.paused:
            new = self._satisfy(new, now)
        self._put(new)
        woken = self._wake_parents(run_id, now) if new.status.is_terminal else ()
        return CommitResult(record=copy.copy(new), woken=woken)

    # -- events and messages --------------------------------------------------------------

    def _next_kept(self, topic: str, after: int, now: datetime) -> tuple[int, bytes] | None:
        """The topic's oldest kept (unexpired) event past position ``after``."""
        log = self._events.get(topic)
        if not log:
            return None
        i = bisect.bisect_right(log, after, key=lambda e: e[0])
        for seq, value, expires in log[i:]:
            if expires > now:
                return seq, value
        return None

    def _take(
        self, rec: RunRecord, topic: str, seq: int | None, value: bytes, now: datetime
    ) -> RunRecord:
        if rec.wait_key is not None:
            self._checkpoints[rec.run_id][rec.wait_key] = (value, now)
        return apply_delivery(rec, now, topic, seq)

    def _satisfy(self, rec: RunRecord, now: datetime) -> RunRecord:
        """A run that just suspended on events takes what is already there for it: the
        oldest message of its mailbox on one of its topics, else the oldest kept event it
        has not taken."""
        topics = topics_of(rec)
        mail = self._mail.get(rec.run_id)
        if mail:
            for i, (topic, value) in enumerate(mail):
                if topic in topics:
                    del mail[i]
                    return self._take(rec, topic, None, value, now)
        best: tuple[int, bytes, str] | None = None
        for topic in topics:
            found = self._next_kept(topic, cursor_of(rec, topic), now)
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], found[1], topic)
        if best is None:
            return rec
        return self._take(rec, best[2], best[0], best[1], now)

    async def append_event(
        self, topic: str, value: bytes, now: datetime, retain: float | None
    ) -> Event:
        self._event_seq += 1
        seq = self._event_seq
        log = self._events.setdefault(topic, [])
        prev = log[-1][0] if log else 0
        expires = None
        if retain is not None:
            expires = now + timedelta(seconds=retain)
            log.append((seq, value, expires))
        elif not log:
            del self._events[topic]
        return Event(topic=topic, seq=seq, value=value, at=now, prev=prev, expires_at=expires)

    async def deliver_event(
        self, event: Event, now: datetime, *, after: int = 0, limit: int = 1000
    ) -> Delivery:
        topic = event.topic
        waiting = sorted(
            (self._order[r], r) for r in self._by_topic.get(topic, ()) if self._order[r] > after
        )
        resumed = []
        for _, run_id in waiting[:limit]:
            rec = self._runs[run_id]
            chosen = choose_event(rec, event, self._next_kept(topic, cursor_of(rec, topic), now))
            if chosen is None:
                continue
            if rec.paused:  # held: kept in its mailbox until it is resumed
                self._mail.setdefault(run_id, []).append((topic, chosen[1]))
                self._put(apply_hold(rec, now, topic, chosen[0]))
                continue
            self._put(self._take(rec, topic, chosen[0], chosen[1], now))
            resumed.append(run_id)
        more = len(waiting) > limit
        return Delivery(resumed=resumed, after=waiting[limit - 1][0] if more else None)

    async def emit_event(
        self, topic: str, value: bytes, now: datetime, retain: float | None, *, limit: int = 1000
    ) -> tuple[Event, Delivery]:
        event = await self.append_event(topic, value, now, retain)
        return event, await self.deliver_event(event, now, limit=limit)

    async def send_message(
        self, run_id: str, topic: str, value: bytes, now: datetime, key: str | None = None
    ) -> SendResult:
        rec = self._runs.get(run_id)
        if rec is None:
            return SendResult(outcome="not_found")
        keys = self._mail_keys.setdefault(run_id, set())
        if key is not None and key in keys:
            return SendResult(outcome="duplicate", record=copy.copy(rec))
        if rec.status.is_terminal:
            return SendResult(outcome="ended", record=copy.copy(rec))
        if key is not None:
            keys.add(key)
        if waits_on(rec, topic) and not rec.paused:
            new = self._take(rec, topic, None, value, now)
            self._put(new)
            return SendResult(outcome="accepted", resumed=True, record=copy.copy(new))
        self._mail.setdefault(run_id, []).append((topic, value))
        return SendResult(outcome="accepted", record=copy.copy(rec))

    async def prune_events(self, now: datetime) -> int:
        pruned = 0
        for topic in list(self._events):
            log = self._events[topic]
            kept = [e for e in log if e[2] > now]
            pruned += len(log) - len(kept)
            if kept:
                self._events[topic] = kept
            else:
                del self._events[topic]
        return pruned

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

    async def fire_timer(self, run_id: str, now: datetime, timeout: TimeoutValue) -> FireResult:
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
            value = timeout_value_of(timeout, rec)
            self._checkpoints[run_id][new.resume_key] = (value, now)
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

    async def pause(self, run_id: str, now: datetime) -> RunRecord | None:
        rec = self._runs.get(run_id)
        if rec is None or rec.status.is_terminal or rec.paused:
            return None
        new = apply_pause(rec, now)
        self._put(new)
        return copy.copy(new)

    async def resume(self, run_id: str, now: datetime) -> RunRecord | None:
        rec = self._runs.get(run_id)
        if rec is None or not rec.paused:
            return None
        new = apply_resume(rec, now)
        if waits_for_events(new):
            new = self._satisfy(new, now)
        elif new.status is RunStatus.SUSPENDED and new.wait_child is not None:
            child = self._runs.get(new.wait_child)
            if child is None or child.status.is_terminal:
                new = apply_event(new, now)
        self._put(new)
        return copy.copy(new)

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
        return self._list(workflow, status, parent_run_id, limit, None)[0]

    def _list(
        self,
        workflow: str | None,
        status: RunStatus | None,
        parent_run_id: str | None,
        limit: int,
        after: int | None,
    ) -> tuple[list[RunRecord], int | None]:
        out: list[RunRecord] = []
        last: int | None = None
        for run_id in sorted(self._order, key=self._order.__getitem__, reverse=True):
            position = self._order[run_id]
            if after is not None and position >= after:
                continue
            rec = self._runs[run_id]
            if workflow is not None and rec.workflow != workflow:
                continue
            if status is not None and rec.status is not status:
                continue
            if parent_run_id is not None and rec.parent_run_id != parent_run_id:
                continue
            if len(out) >= limit:
                return out, last
            out.append(copy.copy(rec))
            last = position
        return out, None

    async def page_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> Page:
        records, following = self._list(workflow, status, None, limit, after)
        return Page(records=records, next=following)

    async def runs_waiting_on(self, topic: str, limit: int = 1000) -> list[RunRecord]:
        return (await self.page_waiting(topic, limit=limit)).records

    async def page_waiting(
        self, topic: str, *, limit: int = 1000, after: int | None = None
    ) -> Page:
        waiting = sorted(
            (self._order[r], r)
            for r in self._by_topic.get(topic, ())
            if after is None or self._order[r] > after
        )
        page = waiting[:limit]
        following = page[-1][0] if len(waiting) > limit else None
        return Page(records=[copy.copy(self._runs[r]) for _, r in page], next=following)

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
