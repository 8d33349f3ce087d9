"""``stemd_runs_waiting_for_slot``: the runs waiting for a slot of a concurrency limit now,
by workflow, counted in the store (so across every daemon sharing it).

A run that finds no slot free waits suspended, its error of code ``waiting_for_slot``
(:mod:`stemd._engine.limits`); the count reads the suspended runs of each workflow this
process limits, at most every ``interval`` seconds (it may read many runs), when
:func:`stemd._observe.refresh_metrics` is awaited before a rendering. Unlike
``stemd_runs_held_back`` (how often this process held a run back, a counter), it goes
down when the runs get their slots.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stemd._engine.limits import WAITING_FOR_SLOT_CODE, LimitedStore
from stemd._model import RunStatus

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import Metric

    from stemd._app import App

__all__ = ["WaitingForSlot"]

_PAGE = 1000


class WaitingForSlot(Collector):
    """The gauge, as last counted by :meth:`refresh`.

    Args:
        app: the open App (its store is a ``LimitedStore`` when it has limits).
        interval: seconds between two counts.
        max_pages: pages of ``1000`` suspended runs read per workflow at most (the count
            of a workflow with more is a lower bound).
    """

    def __init__(self, app: App, interval: float = 30.0, *, max_pages: int = 100) -> None:
        self.app = app
        self.interval = interval
        self.max_pages = max_pages
        self.runs: dict[str, int] = {}
        self._next = 0.0

    async def refresh(self) -> None:
        """Count again if the last count is older than ``interval``."""
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        store = self.app.engine.store
        if not isinstance(store, LimitedStore):
            return
        counts: dict[str, int] = {}
        for workflow, limits in sorted(store.limits.items()):
            if limits.concurrency is None and limits.key_concurrency is None:
                continue  # rate limits only: runs wait for the rate, not for a slot
            counts[workflow] = await self._count(store, workflow)
        # A workflow seen once stays, at 0, so that its series does not vanish.
        self.runs = {**dict.fromkeys(self.runs, 0), **counts}

    async def _count(self, store: LimitedStore, workflow: str) -> int:
        count = 0
        after: int | None = None
        for _ in range(self.max_pages):
            page = await store.inner.page_runs(
                workflow=workflow, status=RunStatus.SUSPENDED, limit=_PAGE, after=after
            )
            count += sum(
                1
                for rec in page.records
                if rec.error is not None and rec.error.code == WAITING_FOR_SLOT_CODE
            )
            after = page.next
            if after is None:
                break
        return count

    def collect(self) -> Iterator[Metric]:
        """The gauge."""
        family = GaugeMetricFamily(
            "stemd_runs_waiting_for_slot",
            "Runs waiting for a slot of a concurrency limit now (in the store), by workflow.",
            labels=["workflow"],
        )
        for workflow, count in sorted(self.runs.items()):
            family.add_metric([workflow], count)
        yield family
