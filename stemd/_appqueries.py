"""The App's reads: runs listed and paged, the runs waiting on a topic, the registered
workflows. A part of :class:`stemd.App` (a mixin), kept apart from its facade."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stemd._appkit import ALL, cursor, positive, workflow_info
from stemd._engine.views import to_run_state
from stemd._identifiers import validate_topic
from stemd._model import RunPage, RunState, RunStatus, parse_status
from stemd._runwindow import instant, page_window

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._codec import Codec
    from stemd._engine.versions import Registry
    from stemd._store.base import Page, RunRecord, Store, WorkflowInfo

__all__ = ["AppQueries"]


class AppQueries:
    """``list_runs``, ``page_runs``, ``runs_waiting_on``, ``page_waiting`` and
    ``registered_workflows`` of an open App."""

    codec: Codec
    workers: bool
    workflows: Registry

    @property
    def store(self) -> Store:
        raise NotImplementedError  # pragma: no cover - the App's

    async def list_runs(
        self,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 100,
        *,
        after: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> list[RunState]:
        """Runs, newest first, optionally filtered by workflow, status and creation time;
        from the cursor ``after`` on (the ``next`` of a :meth:`page_runs`)."""
        page = await self.page_runs(
            workflow,
            status,
            limit,
            after=after,
            created_after=created_after,
            created_before=created_before,
        )
        return page.runs

    async def page_runs(
        self,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 100,
        *,
        after: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> RunPage:
        """A page of runs, newest first, with the cursor of the next (``None``: last).

        Pass ``page.next`` as ``after`` to get the next page. ``created_after``,
        ``created_before``: only the runs created after, before this instant (a
        timezone-aware datetime or an ISO 8601 string); a page of such a window may hold
        fewer than ``limit`` runs when there are more (go on while ``next`` is set).
        """
        limit = positive(limit)
        page = await page_window(
            self.store,
            workflow=workflow,
            status=parse_status(status),
            limit=limit,
            after=cursor(after),
            created_after=instant(created_after, "created_after"),
            created_before=instant(created_before, "created_before"),
        )
        return await self._page(page)

    async def runs_waiting_on(
        self, topic: str, limit: int | None = None, *, after: str | None = None
    ) -> list[RunState]:
        """Runs suspended waiting for an event or message on ``topic``, oldest first: all
        of them, or at most ``limit`` from the cursor ``after`` on (see
        :meth:`page_waiting`)."""
        # Without a limit, all of them in one store call (a KV store reads its index once).
        return (await self.page_waiting(topic, ALL if limit is None else limit, after=after)).runs

    async def page_waiting(
        self, topic: str, limit: int = 1000, *, after: str | None = None
    ) -> RunPage:
        """A page of the runs waiting on ``topic`` (oldest first) and the cursor of the
        next page (``None`` on the last)."""
        validate_topic(topic)
        limit = positive(limit)
        page = await self.store.page_waiting(topic, limit=limit, after=cursor(after))
        return await self._page(page)

    async def _page(self, page: Page) -> RunPage:
        runs = [await self._state(r) for r in page.records]
        return RunPage(runs=runs, next=None if page.next is None else str(page.next))

    async def registered_workflows(self) -> list[WorkflowInfo]:
        """The workflows served here and those recorded in the store by every app with
        workers (a daemon) that has used it, by name. A store records a workflow when such
        an app starts, and never forgets it."""
        found = {w.name: w for w in await self.store.registered_workflows()}
        if self.workers:
            for wf in self.workflows.values():
                found.setdefault(wf.name, workflow_info(wf))
        return [found[name] for name in sorted(found)]

    async def _state(self, rec: RunRecord) -> RunState:
        return to_run_state(rec, await self.store.get_checkpoints(rec.run_id), self.codec)
