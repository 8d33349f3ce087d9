"""Timers of the JetStream KV store: the due ones listed from ``idx.timer.<epoch_ms>.*``
entries, and a due timer fired by a compare-and-set on its run's document (so that of
several daemons firing it, one changes the run)."""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

from stemd._errors import StoreError
from stemd._natsconn import WrongLastSequence
from stemd._store import jetstream_doc as docs
from stemd._store.base import FireResult, RunRecord
from stemd._store.jetstream_records import MAX_TRIES, Found, Records
from stemd._store.transitions import FireAction, apply_fire, timeout_value_of

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._store.base import TimeoutValue
    from stemd._store.jetstream_doc import Doc
    from stemd._store.jetstream_index import Index
    from stemd._store.jetstream_waits import Waits

__all__ = ["RECHECK_AFTER", "Timers"]

#: Seconds a timer entry, once checked against its document, is trusted without reading
#: the document again.
RECHECK_AFTER = 60.0

# A timer entry due, as (epoch milliseconds, run id, key).
_Candidate = tuple[int, str, str]


class Timers:
    """The timers of the runs of ``records``."""

    def __init__(self, records: Records, index: Index, waits: Waits) -> None:
        self.records = records
        self.index = index
        self.waits = waits
        # Timer entries checked against their document lately (key -> (timer_at, when)):
        # the timer asks for the next minute's wake-ups every few seconds, and reading
        # every document again each time (10,000 for 100,000 sleeping runs) held the
        # event loop for 0.4 s. An entry never changes (its key is unique) and a writer
        # that moves a timer deletes the old entry; one left behind only fires a timer
        # for nothing until it is checked again.
        self._checked: dict[str, tuple[datetime, float]] = {}

    async def due(self, until: datetime, limit: int) -> list[tuple[datetime, str]]:
        """Up to ``limit`` runs whose timer is due by ``until``, as (time, run id), soonest
        first; entries their document does not refer to are cleaned up on the way."""
        candidates = await self._candidates(until)
        checked = self._still_checked(candidates)
        out: dict[str, datetime] = {}
        # Read in slices: stale entries (timers that moved) must not crowd out due ones.
        step = max(limit, 64)
        for i in range(0, len(candidates), step):
            await self._collect(candidates[i : i + step], until, checked, out)
            if len(out) >= limit:
                break
        return sorted((at, rid) for rid, at in out.items())[:limit]

    async def _candidates(self, until: datetime) -> list[_Candidate]:
        """The timer entries due by ``until``, soonest first."""
        until_ms = docs.ms(until)
        out: list[_Candidate] = []
        for key in await self.index.bucket.keys("idx.timer.*.*.*"):
            _, _, ms, run_id, _ = key.split(".")
            if int(ms) <= until_ms:
                out.append((int(ms), run_id, key))
        out.sort()
        return out

    def _still_checked(self, candidates: list[_Candidate]) -> dict[str, tuple[datetime, float]]:
        """The entries checked lately that are still listed."""
        fresh_since = time.monotonic() - RECHECK_AFTER
        listed = {key for _, _, key in candidates}
        self._checked = {
            key: seen
            for key, seen in self._checked.items()
            if key in listed and seen[1] >= fresh_since
        }
        return self._checked

    async def _collect(
        self,
        chunk: list[_Candidate],
        until: datetime,
        checked: dict[str, tuple[datetime, float]],
        out: dict[str, datetime],
    ) -> None:
        """Add to ``out`` the runs of ``chunk`` whose timer is due by ``until``."""
        found = await self.records.read_many(rid for _, rid, key in chunk if key not in checked)
        for _, run_id, key in chunk:
            known = checked.get(key)
            if known is not None:
                at: datetime | None = known[0]
            else:
                at = await self._check(key, run_id, found.get(run_id))
                if at is not None:
                    checked[key] = (at, time.monotonic())
            if at is not None and at <= until and run_id not in out:
                out[run_id] = at

    async def _check(self, key: str, run_id: str, found: Found | None) -> datetime | None:
        """The timer of the entry ``key`` by its run's document; a stale entry is
        cleaned up, and has none."""
        if found is None or found[1].idx.get("timer") != key:
            await self.index.clean(key, run_id)
            return None
        return found[1].rec.timer_at

    async def fire(self, run_id: str, now: datetime, timeout: TimeoutValue) -> FireResult:
        """Do what the run's due timer calls for (see
        :meth:`~stemd._store.base.Store.fire_timer`)."""
        records = self.records
        found = records.cached(run_id)
        fresh = found is None
        for _ in range(MAX_TRIES):
            if found is None:
                found = await records.read(run_id, leader=not fresh)
                fresh = True
                if found is None:
                    return FireResult(action="none")
            rev, doc = found
            action, new_rec, _ = apply_fire(doc.rec, now)
            if action == "none":
                if not fresh:  # not due by our cache: make sure
                    found = None
                    continue
                return FireResult(action="none", record=copy.copy(doc.rec))
            if action == "deleted" or new_rec is None:
                if await records.delete(run_id, rev, doc):
                    self._fired(doc)
                    return FireResult(action="deleted")
            else:
                result = await self._write(run_id, rev, doc, action, new_rec, now, timeout)
                if result is not None:
                    self._fired(doc)
                    return result
            found = None
        raise StoreError(f"run {run_id}: gave up after {MAX_TRIES} conflicting writes")

    def _fired(self, doc: Doc) -> None:
        """Forget the check of the timer entry ``doc`` had: the entry is being deleted
        (without waiting), and a listing made meanwhile may still show it."""
        key = doc.idx.get("timer")
        if key is not None:
            self._checked.pop(key, None)

    async def _write(
        self,
        run_id: str,
        rev: int,
        doc: Doc,
        action: FireAction,
        new_rec: RunRecord,
        now: datetime,
        timeout: TimeoutValue,
    ) -> FireResult | None:
        """Write what a fired timer changed; ``None`` when someone else wrote first."""
        if action == "woken" and new_rec.resume_key is not None:
            written = [(new_rec.resume_key, timeout_value_of(timeout, doc.rec))]
            new = docs.with_checkpoints(doc, new_rec, written, now)
        else:
            new = docs.replace(doc, new_rec)
        try:
            new_rev = await self.records.write(run_id, rev, doc, new)
        except WrongLastSequence:
            self.records.forget(run_id)
            return None
        self.records.remember(run_id, new_rev, new)
        woken = await self.waits.wake_parents(new, now) if action == "cancelled" else ()
        return FireResult(action=action, record=copy.copy(new_rec), woken=woken)
