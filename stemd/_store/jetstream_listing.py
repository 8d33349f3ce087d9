"""Listings of the JetStream KV store: runs by workflow, status or parent, newest first,
and the runs ready to advance."""

from __future__ import annotations

import asyncio
import copy
import time
from typing import TYPE_CHECKING

from stemd._store.base import Page
from stemd._store.transitions import is_runnable

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._model import RunStatus
    from stemd._store.base import RunRecord
    from stemd._store.jetstream_doc import Doc
    from stemd._store.jetstream_index import Index

__all__ = ["page_runs", "runnable"]

# A page after the first (``after`` given) is cut from the documents the last listing read
# when that reading is at most this old, rather than from a new reading of every document:
# walking N runs page by page (a group operation, a client paging) reads them once, not
# once per page. Pages are no snapshot of one moment either way.
SNAPSHOT_FOR = 10.0


async def page_runs(
    index: Index,
    *,
    workflow: str | None,
    status: RunStatus | None,
    parent_run_id: str | None,
    limit: int,
    after: int | None = None,
) -> Page:
    """The runs matching every filter given, newest first, at most ``limit``, created
    before the position ``after`` (see :meth:`~stemd._store.base.Store.page_runs`); the
    page's ``next`` is set when there are more. The children of a run are listed by
    index; any other listing reads every document."""
    if parent_run_id is not None:
        found = await index.indexed(f"idx.parent.{parent_run_id}.*.*", "parent")
        docs = sorted((doc for _, _, doc in found), key=_order, reverse=True)
    else:
        docs = await _every_doc(index, fresh=after is None)
    out: list[RunRecord] = []
    last = 0
    for doc in docs:
        if after is not None and doc.order >= after:
            continue
        if _matches(doc, workflow, status, parent_run_id):
            if len(out) >= limit:
                return Page(records=out, next=last)
            out.append(copy.copy(doc.rec))  # (the reading may serve the next pages too)
            last = doc.order
    return Page(records=out)


async def _every_doc(index: Index, *, fresh: bool) -> list[Doc]:
    """Every run document, newest first: read now, or (not ``fresh``) as the last listing
    read them if that was at most :data:`SNAPSHOT_FOR` seconds ago."""
    last = index.last_listing
    now = time.monotonic()
    if not fresh and last is not None and now - last[0] <= SNAPSHOT_FOR:
        return last[1]
    found = (await index.records.read_all()).values()
    docs = sorted((doc for _, doc in found), key=_order, reverse=True)
    reading = index.last_listing = (now, docs)
    # Not kept past its use: a store of many runs would hold them all until its next listing.
    asyncio.get_running_loop().call_later(SNAPSHOT_FOR, _let_go, index, reading)
    return docs


def _let_go(index: Index, reading: tuple[float, list[Doc]]) -> None:
    if index.last_listing is reading:
        index.last_listing = None


def _order(doc: Doc) -> int:
    return doc.order


def _matches(
    doc: Doc, workflow: str | None, status: RunStatus | None, parent_run_id: str | None
) -> bool:
    rec = doc.rec
    return (
        (workflow is None or rec.workflow == workflow)
        and (status is None or rec.status is status)
        and (parent_run_id is None or rec.parent_run_id == parent_run_id)
    )


async def runnable(index: Index, now: datetime, limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` live runs ready to advance at ``now``, as (run id, queue)."""
    out = []
    for run_id, _, doc in await index.indexed("idx.live.*.*", "live"):
        if is_runnable(doc.rec, now):
            out.append((run_id, doc.rec.queue))
            if len(out) >= limit:
                break
    return out
