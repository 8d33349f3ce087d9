"""Pages of runs created within a time window (``list``'s ``created_after`` and
``created_before``), read through the store's listing of runs, newest first.

A store lists runs by position (newest first), not by time. A page of the runs created in
a window is read from as many store pages as it takes, each no larger than the runs still
wanted (so that the cursor of the page returned is always a store position: the runs
after it are never skipped), and it stops early:

- at the first run created at or before ``created_after``: runs are listed in the order
  they were created, so none further down is newer (``next`` is ``None``);
- after :data:`SCAN` store pages: the page returned may then hold fewer runs than asked,
  and its ``next`` says where to go on.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from stemd._errors import StemError
from stemd._store.base import Page

if TYPE_CHECKING:
    from stemd._model import RunStatus
    from stemd._store.base import RunRecord, Store

__all__ = ["SCAN", "instant", "page_window"]

SCAN = 20  # store pages read at most for one page of a window


def instant(value: object, name: str) -> datetime | None:
    """``value`` as a timezone-aware datetime (or an ISO 8601 string of one); ``None``
    for ``None``.

    Raises:
        StemError: anything else, or a time without a time zone.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise StemError(f"{name} must be an ISO 8601 time, not {value!r}") from None
    if not isinstance(value, datetime):
        raise StemError(f"{name} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise StemError(f"{name} must have a time zone (e.g. 2026-01-31T12:00:00+00:00)")
    return value


def _inside(rec: RunRecord, after: datetime | None, before: datetime | None) -> bool:
    at = rec.created_at
    return (after is None or at > after) and (before is None or at < before)


async def page_window(
    store: Store,
    *,
    workflow: str | None,
    status: RunStatus | None,
    limit: int,
    after: int | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> Page:
    """The runs of ``store`` matching the filters, created after ``created_after`` and
    before ``created_before`` (both exclusive), newest first, from position ``after`` on:
    at most ``limit`` of them (fewer when :data:`SCAN` store pages did not find more)."""
    if created_after is None and created_before is None:
        return await store.page_runs(workflow=workflow, status=status, limit=limit, after=after)
    found: list[RunRecord] = []
    position = after
    for _ in range(SCAN):
        page = await store.page_runs(
            workflow=workflow, status=status, limit=limit - len(found), after=position
        )
        found += [r for r in page.records if _inside(r, created_after, created_before)]
        position = page.next
        oldest = page.records[-1].created_at if page.records else None
        if created_after is not None and oldest is not None and oldest <= created_after:
            return Page(records=found, next=None)
        if len(found) >= limit or position is None:
            break
    return Page(records=found, next=position)
