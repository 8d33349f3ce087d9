"""Runs of the JetStream KV store waiting on another: a parent suspended on a child (the
runs waiting on an event are in :mod:`~stemd._store.jetstream_events`).

A child's end wakes the runs waiting on it, but only when flagged ``awaited`` (most runs
have nobody waiting, and skip the look); the flag is a compare-and-set on the child, so
either the child's terminal write sees it or the waiter sees the end. The sweeper's pass
wakes a parent whose wake was lost with a process or a failed write.

Every listed run is asked (a wake is conditional): a document read from a
lagging replica may not show yet the wait its entry was written for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from stemd._model import RunStatus
from stemd._store import jetstream_doc as docs
from stemd._store.transitions import apply_event

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._store.base import RunRecord
    from stemd._store.jetstream_doc import Doc
    from stemd._store.jetstream_index import Index
    from stemd._store.jetstream_records import Records

__all__ = ["Waits"]

log = structlog.get_logger("stemd.store.jetstream")


class Waits:
    """Waking the runs that wait on a child."""

    def __init__(self, records: Records, index: Index) -> None:
        self.records = records
        self.index = index

    # -- children -------------------------------------------------------------------------

    async def child_ended(self, child_id: str) -> bool:
        """Whether the run ``child_id`` has ended (or does not exist)."""
        child = await self.records.lookup(child_id)
        return child is None or child[1].rec.status.is_terminal

    async def await_child(self, child_id: str) -> bool:
        """Flag ``child_id`` as awaited; ``True`` when it has ended (or does not exist).

        The flag is a compare-and-set on the child, so either the child's terminal write
        comes after it (and sees the flag, and wakes the waiters) or before it (and this
        sees the end)."""
        ended = False

        def fn(doc: Doc) -> Doc | None:
            nonlocal ended
            ended = doc.rec.status.is_terminal
            if ended or doc.awaited:
                return None
            flagged = docs.replace(doc, doc.rec)
            flagged.awaited = True
            return flagged

        old, _ = await self.records.mutate(child_id, fn)
        return old is None or ended

    async def wake_if_waiting(self, run_id: str, child_id: str, now: datetime) -> RunRecord | None:
        """Wake ``run_id`` if it is suspended waiting on ``child_id``; its new record."""

        def fn(doc: Doc) -> Doc | None:
            rec = doc.rec
            if rec.status is not RunStatus.SUSPENDED or rec.wait_child != child_id or rec.paused:
                return None
            return docs.replace(doc, apply_event(rec, now))

        _, new = await self.records.mutate(run_id, fn)
        return new.rec if new is not None else None

    async def wake_parents(self, child: Doc, now: datetime) -> tuple[str, ...]:
        """Wake the runs suspended waiting on ``child``, which just ended."""
        if not child.awaited:
            return ()
        child_id = child.rec.run_id
        parents = await self.index.listed(f"idx.child.{child_id}.*.*")
        woken = []
        for parent_id in sorted(parents):
            if await self.wake_if_waiting(parent_id, child_id, now) is not None:
                woken.append(parent_id)
        return tuple(woken)

    async def wake_forgotten_parents(self, now: datetime) -> None:
        """Wake the runs still suspended on a child that has ended (the sweeper's pass).

        A parent is woken by a second write after the child's end (or after its own
        suspension, when the child ended first); a process that dies between the two, or
        a write that fails, would leave it waiting forever. Runs waiting on children are
        few and listed by index, so looking at them all now and then is cheap."""
        waiting: dict[str, set[str]] = {}
        for parent_id, keys in (await self.index.listed("idx.child.*.*.*")).items():
            for key in keys:
                waiting.setdefault(key.split(".")[2], set()).add(parent_id)
        if not waiting:
            return
        children = await self.records.read_many(waiting)
        for child_id, parents in waiting.items():
            found = children.get(child_id) or await self.records.lookup(child_id)
            if found is not None and not found[1].rec.status.is_terminal:
                continue
            for parent_id in sorted(parents):
                if await self.wake_if_waiting(parent_id, child_id, now) is not None:
                    log.warning("woke a run its child's end had not", run_id=parent_id)
