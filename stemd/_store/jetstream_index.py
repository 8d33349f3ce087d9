"""Listings through the index entries of the JetStream KV store.

``idx.<kind>.<...>.<run_id>.<nonce>`` keys list runs by subject filter; the run's
document is the truth. A listing checks every entry against the document of its run, and
an entry the document does not refer to (left by a crash, or by a writer that lost a
race) is ignored, then removed once old: after a no-op compare-and-set on the document,
which fences out any writer still about to refer to it.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from stemd._natsconn import WrongLastSequence
from stemd._store import jetstream_doc as docs

if TYPE_CHECKING:
    from stemd._store.jetstream_bucket import Bucket
    from stemd._store.jetstream_doc import Doc
    from stemd._store.jetstream_records import Records

__all__ = ["STALE_AFTER", "Index"]

log = structlog.get_logger("stemd.store.jetstream")

#: Entries not referred to by their run's document are removed only when older than this.
STALE_AFTER = timedelta(seconds=60)


class Index:
    """The index entries of ``records``' bucket."""

    def __init__(self, records: Records) -> None:
        self.records = records
        self.bucket: Bucket = records.bucket
        # When the last listing of every run read them (monotonic seconds), and what it
        # read, newest first (see jetstream_listing.page_runs).
        self.last_listing: tuple[float, list[Doc]] | None = None

    async def listed(self, pattern: str) -> dict[str, list[str]]:
        """The run ids of the entries matching ``pattern``, with their keys, not checked
        against the documents. On a replicated bucket the leader lists them, so every
        entry acknowledged before the call is there."""
        by_run: dict[str, list[str]] = {}
        for key in await self.bucket.keys_from_leader(pattern):
            by_run.setdefault(docs.entry_run(key), []).append(key)
        return by_run

    async def indexed(self, pattern: str, kind: str) -> list[tuple[str, int, Doc]]:
        """The runs listed under ``pattern`` whose document still owns that entry, as
        (run id, revision, document); stale entries are cleaned up on the way."""
        by_run: dict[str, list[str]] = {}
        for key in await self.bucket.keys(pattern):
            by_run.setdefault(docs.entry_run(key), []).append(key)
        found_docs = await self.records.read_many(by_run)
        out: list[tuple[str, int, Doc]] = []
        for run_id, keys in by_run.items():
            found = found_docs.get(run_id)
            # The entries of that kind the document owns (a wait on several topics owns
            # a watch entry for each: kinds watch, watch1, watch2...).
            owned = (
                {e for k, e in found[1].idx.items() if k.rstrip("0123456789") == kind}
                if found is not None
                else set()
            )
            for key in keys:
                if found is not None and key in owned:
                    out.append((run_id, found[0], found[1]))
                else:
                    await self.clean(key, run_id)
        return out

    async def clean(self, key: str, run_id: str) -> None:
        """Remove an entry its run's document does not refer to, once it is old enough."""
        bucket = self.bucket
        msg = await bucket.get(key)
        if msg is None:
            return
        stamp = docs.parse_time(msg.time)
        if stamp is None or datetime.now(UTC) - stamp < STALE_AFTER:
            return
        current = await self.records.read(run_id, leader=True)
        if current is not None:
            rev, doc = current
            if key in doc.idx.values():
                return
            # A no-op compare-and-set: a writer that put this entry and has not yet
            # written its document will now fail and retry with a new entry.
            try:
                await self.records.write(run_id, rev, doc, copy.copy(doc))
            except WrongLastSequence:
                return
            self.records.forget(run_id)
        log.info("removing a stale index entry", key=key)
        await bucket.delete(msg.seq)
