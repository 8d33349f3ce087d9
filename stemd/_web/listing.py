"""Pages of runs for the dashboard's lists, without their checkpoints.

``App.page_runs`` returns each run with its checkpoints and timeline: one more store read
per run, which a list of 50 (or the overview's 500) does not show. :class:`RunLister`
reads a page in one store query, so that a list open on a busy daemon, refreshed as runs
change, takes little from the store the workers write to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stemd._appkit import cursor
from stemd._engine.views import to_run_state
from stemd._model import RunPage, RunStatus, parse_status
from stemd._runwindow import instant, page_window

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._codec import Codec
    from stemd._store.base import Store

__all__ = ["RunLister"]


class RunLister:
    """Pages of runs of ``store``, their values decoded with ``codec`` (the App's)."""

    def __init__(self, store: Store, codec: Codec) -> None:
        self.store = store
        self.codec = codec

    async def page(
        self,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 50,
        after: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> RunPage:
        """A page of runs, newest first, from the cursor ``after`` on; no checkpoints;
        ``created_after``, ``created_before``: as ``App.page_runs``.

        Raises:
            StemError: a bad status, cursor or time.
        """
        page = await page_window(
            self.store,
            workflow=workflow,
            status=parse_status(status),
            limit=limit,
            after=cursor(after),
            created_after=instant(created_after, "created_after"),
            created_before=instant(created_before, "created_before"),
        )
        runs = [to_run_state(rec, (), self.codec) for rec in page.records]
        return RunPage(runs=runs, next=None if page.next is None else str(page.next))
