"""The group operations of :class:`stemd.App`: pause, resume or cancel every run a filter
selects (see :mod:`stemd._engine.groups` and docs/howto/operating-many-runs.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stemd._engine.groups import GroupOp, Groups, check_new_runs, group_filter
from stemd._errors import StemError

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from stemd._engine.engine import Engine
    from stemd._model import RunStatus

__all__ = ["GroupOperations"]


class GroupOperations:
    """``pause_runs``, ``resume_runs`` and ``cancel_runs`` (a base of :class:`stemd.App`).

    Every one takes the same filters, all keyword arguments, each of which must hold for a
    run to be in the group (at least one is required):

    - ``run_ids``: these runs;
    - ``topic``: the runs suspended waiting for an event or message on ``topic``;
    - ``workflow``: the runs of this workflow;
    - ``status``: the runs in this status (a :class:`~stemd.RunStatus` or its name);
    - ``created_after``, ``created_before``: the runs created after, before this instant
      (a timezone-aware datetime or an ISO 8601 string).

    Each returns how many runs it changed (with ``dry_run=True``: would change, and
    changes nothing). They work straight on the store, with or without a daemon up.
    """

    if TYPE_CHECKING:

        @property
        def engine(self) -> Engine:
            """The App's engine."""
            ...

    async def _group(
        self,
        op: GroupOp,
        dry_run: bool,
        reason: str,
        new_runs: bool,
        run_ids: Iterable[str] | None,
        topic: str | None,
        workflow: str | None,
        status: RunStatus | str | None,
        created_after: datetime | str | None,
        created_before: datetime | str | None,
    ) -> int:
        selected = group_filter(
            run_ids=run_ids,
            topic=topic,
            workflow=workflow,
            status=status,
            created_after=created_after,
            created_before=created_before,
        )
        groups = Groups(self.engine)
        if dry_run:
            if new_runs:
                check_new_runs(op, selected)
            return (await groups.preview(op, selected, 0))[0]
        return await groups.apply(op, selected, reason, new_runs=new_runs)

    async def paused_workflows(self) -> list[str]:
        """The workflows whose new runs start paused (``pause_runs(new_runs=True)``)."""
        return await self.engine.store.paused_workflows()

    async def preview_runs(
        self,
        op: GroupOp,
        *,
        limit: int = 1000,
        run_ids: Iterable[str] | None = None,
        topic: str | None = None,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
    ) -> tuple[int, list[str]]:
        """What ``op`` (``"pause"``, ``"resume"`` or ``"cancel"``) would change: how many
        runs, and the ids of the first ``limit`` of them. Changes nothing."""
        if op not in ("pause", "resume", "cancel"):
            raise StemError(f"unknown group operation {op!r} (pause, resume or cancel)")
        selected = group_filter(
            run_ids=run_ids,
            topic=topic,
            workflow=workflow,
            status=status,
            created_after=created_after,
            created_before=created_before,
        )
        return await Groups(self.engine).preview(op, selected, max(0, limit))

    async def pause_runs(
        self,
        *,
        run_ids: Iterable[str] | None = None,
        topic: str | None = None,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        dry_run: bool = False,
        new_runs: bool = False,
    ) -> int:
        """Pause every run of the group that has not ended; return how many it paused.

        A paused run keeps its status and is shown as paused (``RunState.paused``). It is
        not taken by any worker, its timers (sleeps, timeouts, deadlines) are held, and
        the events and messages its wait is given meanwhile are kept for it. A running run
        stops at its next checkpoint. :meth:`resume_runs` lets it go on where it was.

        With ``new_runs=True`` (and ``workflow``), the runs of the workflow started from now
        on start paused too, until ``resume_runs(workflow=..., new_runs=True)``.
        """
        return await self._group(
            "pause",
            dry_run,
            "",
            new_runs,
            run_ids,
            topic,
            workflow,
            status,
            created_after,
            created_before,
        )

    async def resume_runs(
        self,
        *,
        run_ids: Iterable[str] | None = None,
        topic: str | None = None,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        dry_run: bool = False,
        new_runs: bool = False,
    ) -> int:
        """Resume every paused run of the group; return how many it resumed. A run whose
        wait was given an event, a message or its child's end while paused takes it now;
        a timer that came due meanwhile fires now. ``new_runs=True`` (with ``workflow``):
        the workflow's new runs no longer start paused."""
        return await self._group(
            "resume",
            dry_run,
            "",
            new_runs,
            run_ids,
            topic,
            workflow,
            status,
            created_after,
            created_before,
        )

    async def cancel_runs(
        self,
        *,
        reason: str = "cancelled",
        run_ids: Iterable[str] | None = None,
        topic: str | None = None,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        dry_run: bool = False,
    ) -> int:
        """Cancel every run of the group that has not ended (and their unfinished
        children), with ``reason``; return how many it cancelled."""
        if not isinstance(reason, str) or not reason:
            raise StemError("reason must be a non-empty string")
        return await self._group(
            "cancel",
            dry_run,
            reason,
            False,
            run_ids,
            topic,
            workflow,
            status,
            created_after,
            created_before,
        )
