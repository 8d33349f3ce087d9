"""The scheduler: starts the runs of an App's schedules at their ticks.

It registers the schedules in the store when it starts, then sleeps until the earliest
next tick of any of them (never polling), and deals with the due ticks of each schedule
whose tick came (:func:`~stemd._engine.scheduling.run_due`): a paused schedule's ticks
pass, the others start as their overlap and catch-up policies say. Several daemons
serving one schedule each do this; the run of a tick is created once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import structlog

from stemd._cron import zone
from stemd._engine.scheduling import register_schedules, run_due

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime, tzinfo

    from anyio.abc import TaskStatus

    from stemd._cron import CronSchedule
    from stemd._engine.engine import Engine
    from stemd._schedules import Schedule

__all__ = ["Scheduler"]

log = structlog.get_logger("stemd.schedules")


class Scheduler:
    """The scheduler actor of an App with workers and schedules."""

    name = "scheduler"

    def __init__(self, engine: Engine, schedules: Sequence[Schedule]) -> None:
        self.engine = engine
        self.schedules = list(schedules)
        self.ticks_dealt = 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        engine = self.engine
        await register_schedules(engine, self.schedules)
        task_status.started()
        crons = {s.name: (s.parsed(), zone(s.timezone)) for s in self.schedules}
        # The next tick of each schedule, from its recorded last tick.
        upcoming: dict[str, datetime] = {}
        for name in crons:
            record = await run_due(engine, name)
            self._plan(upcoming, crons, name, record.last_tick if record else None)
        while upcoming:
            await engine.clock.sleep_until(min(upcoming.values()))
            now = engine.clock.now()
            for name in [n for n, at in upcoming.items() if at <= now]:
                record = await run_due(engine, name)
                self.ticks_dealt += 1
                self._plan(upcoming, crons, name, record.last_tick if record else None)

    def _plan(
        self,
        upcoming: dict[str, datetime],
        crons: dict[str, tuple[CronSchedule, tzinfo]],
        name: str,
        last: datetime | None,
    ) -> None:
        cron, tz = crons[name]
        at = cron.next_after(last if last is not None else self.engine.clock.now(), tz)
        if at is None:
            log.warning("schedule has no next tick", schedule=name)
            upcoming.pop(name, None)
        else:
            upcoming[name] = at
