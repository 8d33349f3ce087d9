"""Operations on groups of runs: pause, resume and cancel every run a filter selects.

A group is selected through the store's listings (the runs waiting on a topic, the runs of
a workflow or status, or explicit run ids), page by page, and narrowed by the filters the
listing did not apply. Each run is changed by its own atomic store transition, a bounded
number at a time: a store's writer is never held for a whole group (SQLite commits a few
dozen of them per transaction, among everyone else's writes), and every transition is
conditional (pausing a paused run changes nothing), so an operation interrupted half-way
(a crash) is finished by running it again. Each operation returns how many runs it changed.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Literal

import anyio
import msgspec

from stemd._errors import StemError
from stemd._identifiers import validate_run_id, validate_topic
from stemd._model import RunStatus, parse_status
from stemd._runwindow import instant
from stemd._store.base import topics_of
from stemd._store.transitions import is_runnable

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator

    from stemd._engine.engine import Engine
    from stemd._store.base import RunRecord

__all__ = ["GroupFilter", "GroupOp", "Groups", "check_new_runs", "group_filter"]

GroupOp = Literal["pause", "resume", "cancel"]

# Runs read per page of a listing, and store transitions in flight at once.
PAGE = 1000
AT_ONCE = 32


class GroupFilter(msgspec.Struct, frozen=True, kw_only=True):
    """What selects a group of runs: every filter given must hold."""

    run_ids: tuple[str, ...] | None = None
    topic: str | None = None
    workflow: str | None = None
    status: RunStatus | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def matches(self, rec: RunRecord) -> bool:
        """Whether ``rec`` is in the group."""
        return (
            (self.run_ids is None or rec.run_id in self.run_ids)
            and (self.workflow is None or rec.workflow == self.workflow)
            and (self.status is None or rec.status is self.status)
            and (
                self.topic is None
                or (rec.status is RunStatus.SUSPENDED and self.topic in topics_of(rec))
            )
            and (self.created_after is None or rec.created_at > self.created_after)
            and (self.created_before is None or rec.created_at < self.created_before)
        )


def _run_ids(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise StemError("run_ids must be a list of run ids")
    return tuple(dict.fromkeys(validate_run_id(r) for r in value))


def group_filter(
    *,
    run_ids: Iterable[str] | None = None,
    topic: str | None = None,
    workflow: str | None = None,
    status: RunStatus | str | None = None,
    created_after: datetime | str | None = None,
    created_before: datetime | str | None = None,
) -> GroupFilter:
    """The filter of these arguments, validated.

    Raises:
        StemError: a malformed filter, or none at all (an operation on every run is
            asked for by a filter that says so, such as a status).
    """
    if workflow is not None and (not isinstance(workflow, str) or not workflow):
        raise StemError(f"workflow must be a workflow name, not {workflow!r}")
    selected = GroupFilter(
        run_ids=_run_ids(run_ids),
        topic=validate_topic(topic) if topic is not None else None,
        workflow=workflow,
        status=parse_status(status),
        created_after=instant(created_after, "created_after"),
        created_before=instant(created_before, "created_before"),
    )
    if selected == GroupFilter():
        raise StemError(
            "no filter given: name the runs by run_ids, topic, workflow, status,"
            " created_after or created_before"
        )
    return selected


def check_new_runs(op: GroupOp, selected: GroupFilter) -> None:
    """Refuse ``new_runs`` where it means nothing.

    Raises:
        StemError: not a pause or resume, or no ``workflow`` filter.
    """
    if op == "cancel" or selected.workflow is None:
        raise StemError("new_runs is for pausing or resuming a workflow: give workflow too")


def _concerned(op: GroupOp, rec: RunRecord) -> bool:
    """Whether ``op`` would change ``rec``."""
    if op == "resume":
        return rec.paused
    return not rec.status.is_terminal and (op == "cancel" or not rec.paused)


class Groups:
    """The group operations of one engine (``App.pause_runs`` and its siblings)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def pages(self, selected: GroupFilter) -> AsyncIterator[list[RunRecord]]:
        """The runs ``selected`` selects, page by page (each run at most once)."""
        store = self.engine.store
        if selected.run_ids is not None:
            ids = selected.run_ids
            for i in range(0, len(ids), PAGE):
                found = [await store.get_run(r) for r in ids[i : i + PAGE]]
                yield [r for r in found if r is not None and selected.matches(r)]
            return
        after: int | None = None
        while True:
            if selected.topic is not None:
                page = await store.page_waiting(selected.topic, limit=PAGE, after=after)
            else:
                page = await store.page_runs(
                    workflow=selected.workflow, status=selected.status, limit=PAGE, after=after
                )
            yield [r for r in page.records if selected.matches(r)]
            if page.next is None:
                return
            after = page.next

    async def preview(
        self, op: GroupOp, selected: GroupFilter, limit: int
    ) -> tuple[int, list[str]]:
        """How many runs ``op`` would change, and the ids of the first ``limit``."""
        count = 0
        ids: list[str] = []
        async for page in self.pages(selected):
            for rec in page:
                if _concerned(op, rec):
                    count += 1
                    if len(ids) < limit:
                        ids.append(rec.run_id)
        return count, ids

    async def apply(
        self,
        op: GroupOp,
        selected: GroupFilter,
        reason: str = "cancelled",
        *,
        new_runs: bool = False,
    ) -> int:
        """Apply ``op`` to every run of the group; how many it changed. ``new_runs``
        (pause and resume of a ``workflow``): first set whether the workflow's new runs are
        created paused, so that none started meanwhile escapes the pause."""
        if new_runs:
            check_new_runs(op, selected)
            assert selected.workflow is not None
            await self.engine.store.pause_workflow(selected.workflow, op == "pause")
        changed = 0

        async def work(todo: Iterator[str]) -> None:
            nonlocal changed
            for run_id in todo:  # shared by the page's workers: each run taken once
                if await self._one(op, run_id, reason):
                    changed += 1

        async for page in self.pages(selected):
            ids = [rec.run_id for rec in page if _concerned(op, rec)]
            todo = iter(ids)
            # AT_ONCE workers a page, not a task per run waiting for its turn.
            async with anyio.create_task_group() as tg:
                for _ in range(min(AT_ONCE, len(ids))):
                    tg.start_soon(work, todo)
        return changed

    async def _one(self, op: GroupOp, run_id: str, reason: str) -> bool:
        engine = self.engine
        if op == "cancel":
            return await engine.cancel(run_id, reason)
        now = engine.clock.now()
        store = engine.store
        rec = await (store.pause(run_id, now) if op == "pause" else store.resume(run_id, now))
        if rec is None:
            return False
        engine._changed(rec)
        if is_runnable(rec, now):
            await engine._enqueue(run_id, rec.queue, rec.token)
        return True
