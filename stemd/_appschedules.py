"""The App's schedules and forks: a part of :class:`stemd.App` (a mixin), kept apart from
its facade."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stemd._cron import parse_cron, zone
from stemd._engine.fork import fork_run
from stemd._engine.scheduling import (
    check_schedules,
    schedule_store,
    set_paused,
    trigger,
)
from stemd._errors import RunNotFound, StemError
from stemd._identifiers import validate_run_id
from stemd._schedules import Schedule, ScheduleInfo

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from stemd._actors.supervisor import Actor
    from stemd._engine.engine import Engine
    from stemd._store.schedules import ScheduleRecord

__all__ = ["AppSchedules", "collect_schedules"]


def collect_schedules(*groups: Iterable[Schedule]) -> list[Schedule]:
    """The schedules of ``groups``, checked: each a :class:`Schedule`, names unique."""
    out: dict[str, Schedule] = {}
    for group in groups:
        for schedule in group:
            if not isinstance(schedule, Schedule):
                raise StemError(f"not a stemd.Schedule: {schedule!r}")
            if schedule.name in out:
                raise StemError(f"two schedules are named {schedule.name!r}")
            out[schedule.name] = schedule
    return list(out.values())


class AppSchedules:
    """Schedules (list, pause, resume, trigger) and forks of an open App."""

    schedules: list[Schedule]
    workers: bool

    @property
    def engine(self) -> Engine:
        raise NotImplementedError  # pragma: no cover - the App's

    def _schedule_actors(self, engine: Engine) -> list[Actor]:
        """The scheduler, for an App with workers and schedules (checked first: an
        unknown workflow or params that do not fit it fail the App's start)."""
        if not self.schedules:
            return []
        from stemd._actors.scheduler import Scheduler

        check_schedules(engine, self.schedules)
        return [Scheduler(engine, self.schedules)]

    async def _check_parent(self, parent_run_id: str | None) -> None:
        """Raise ``RunNotFound`` unless ``parent_run_id`` is ``None`` or a run."""
        if parent_run_id is not None:
            validate_run_id(parent_run_id)
            if await self.engine.store.get_run(parent_run_id) is None:
                raise RunNotFound(f"no parent run {parent_run_id}")

    async def fork_run(self, run_id: str, step: str) -> str:
        """Start a new run of ``run_id``'s workflow and params with the checkpoints
        ``run_id`` recorded before ``step``: it runs from ``step`` on. The original run is
        not changed. Return the new run's id.

        Raises:
            RunNotFound: there is no such run.
            StepNotFound: the run has no such step.
        """
        return await fork_run(self.engine, run_id, step)

    async def list_schedules(self) -> list[ScheduleInfo]:
        """Every schedule recorded in the store (by the daemons that serve them), by name,
        with its state."""
        now = self.engine.clock.now()
        records = await schedule_store(self.engine).list_schedules()
        return [self._info(r, now) for r in records]

    async def get_schedule(self, name: str) -> ScheduleInfo | None:
        """The schedule ``name`` with its state, or ``None``."""
        record = await schedule_store(self.engine).get_schedule(name)
        return None if record is None else self._info(record, self.engine.clock.now())

    async def pause_schedule(self, name: str) -> ScheduleInfo:
        """Pause a schedule: its ticks pass without starting runs, in every daemon.

        Raises:
            ScheduleNotFound: there is no such schedule.
        """
        record = await set_paused(self.engine, name, True)
        return self._info(record, self.engine.clock.now())

    async def resume_schedule(self, name: str) -> ScheduleInfo:
        """Resume a paused schedule from now on (the ticks of the pause are not caught up).

        Raises:
            ScheduleNotFound: there is no such schedule.
        """
        record = await set_paused(self.engine, name, False)
        return self._info(record, self.engine.clock.now())

    async def trigger_schedule(self, name: str, run_id: str | None = None) -> str:
        """Start a run of the schedule now, out of its ticks (also when paused); return
        its id. ``run_id`` makes the trigger idempotent.

        Raises:
            ScheduleNotFound: there is no such schedule.
        """
        return await trigger(self.engine, name, run_id)

    def _info(self, record: ScheduleRecord, now: datetime) -> ScheduleInfo:
        next_tick = None
        if not record.paused:
            try:
                cron, tz = parse_cron(record.cron), zone(record.timezone)
            except StemError:  # written by another version of stemd: shown as it is
                cron = None
            if cron is not None:
                next_tick = cron.next_after(max(now, record.last_tick or now), tz)
        codec = self.engine.codec_for(record.workflow)
        params = codec.decode(record.params) if record.params else None
        return ScheduleInfo(
            name=record.name,
            workflow=record.workflow,
            cron=record.cron,
            timezone=record.timezone,
            params=params,
            overlap=record.overlap,
            catch_up=record.catch_up,
            paused=record.paused,
            last_tick=record.last_tick,
            last_run_id=record.last_run_id,
            next_tick=next_tick,
            updated_at=record.updated_at,
        )
