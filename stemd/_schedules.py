"""``stemd.Schedule``: start a workflow on a cron schedule (see docs/reference/schedules.md).

A schedule is data (a frozen msgspec struct), so the daemon's config (``[[schedules]]``)
converts to it; it checks its cron expression and time zone when it is made.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec

from stemd._authoring.classes import definition_of
from stemd._cron import CronError, CronSchedule, ScheduleError, parse_cron, zone

__all__ = ["Schedule", "ScheduleError", "ScheduleInfo"]

# A tick's run id is the name, '-' and 16 characters: run ids are at most 128.
_MAX_NAME = 100
_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")


class Schedule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Start ``workflow`` with ``params`` at every tick of ``cron``.

    Each tick starts at most one run, whatever the number of daemons serving the
    schedule: its run id is made of the schedule's name and the tick's instant in UTC
    (``nightly-20261203T020000Z``), and a second start of that id starts nothing.

    Args:
        name: 1-100 letters, digits, ``-`` or ``_`` (it starts the run ids).
        workflow: the workflow's name, or the Flow, script or ``@stemd.workflow`` class.
        cron: five fields (``"0 2 * * *"``), six with seconds first (``"*/5 * * * * *"``),
            a macro (``"@daily"``) or an interval (``"@every 30s"``).
        params: the params of every run it starts.
        overlap: when a tick comes while the run of the previous one has not ended:
            ``"skip"`` the tick, ``"allow"`` both, or ``"cancel"`` the previous run.
        catch_up: which of the ticks missed while no daemon ran (or that are more than
            ``grace`` seconds late) start: ``"skip"`` none of them, ``"latest"`` the
            latest, ``"all"`` every one (the last ``catch_up_limit``).
        timezone: the IANA time zone of the cron's wall-clock times (DST honoured).
        catch_up_limit: most missed ticks started by ``catch_up="all"``.
        grace: seconds a tick may be late and still count as on time.

    Raises:
        ScheduleError: a bad name, cron expression, time zone or limit.
    """

    name: str
    workflow: Any
    cron: str
    params: Any = None
    overlap: Annotated[str, msgspec.Meta(pattern="^(skip|allow|cancel)$")] = "skip"
    catch_up: Annotated[str, msgspec.Meta(pattern="^(skip|latest|all)$")] = "skip"
    timezone: str = "UTC"
    catch_up_limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    grace: Annotated[float, msgspec.Meta(ge=0)] = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ScheduleError(
                f"schedule name {self.name!r}: use 1-{_MAX_NAME} letters, digits, '-' or '_'"
            )
        where = f"schedule {self.name!r}"
        workflow = self.workflow
        if not isinstance(workflow, str):
            workflow = getattr(definition_of(workflow), "name", workflow)
        if not isinstance(workflow, str) or not workflow:
            raise ScheduleError(f"{where}: workflow must be a name or a workflow, not {workflow!r}")
        msgspec.structs.force_setattr(self, "workflow", workflow)
        if self.overlap not in ("skip", "allow", "cancel"):
            raise ScheduleError(f"{where}: overlap must be 'skip', 'allow' or 'cancel'")
        if self.catch_up not in ("skip", "latest", "all"):
            raise ScheduleError(f"{where}: catch_up must be 'skip', 'latest' or 'all'")
        if not isinstance(self.catch_up_limit, int) or self.catch_up_limit < 1:
            raise ScheduleError(f"{where}: catch_up_limit must be at least 1")
        try:
            parse_cron(self.cron)
            zone(self.timezone)
        except CronError as exc:
            raise ScheduleError(f"{where}: {exc}") from None

    def parsed(self) -> CronSchedule:
        """The cron expression, parsed."""
        return parse_cron(self.cron)


class ScheduleInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as recorded in the store, with its state (``App.list_schedules``).

    Attributes:
        name, workflow, cron, timezone, overlap, catch_up: as the :class:`Schedule`.
        params: the params of the runs it starts.
        paused: its ticks pass without starting runs (see ``App.pause_schedule``).
        last_tick: every tick at or before it has been dealt with.
        last_run_id: the run it started last (a tick's or a trigger's).
        next_tick: its next tick (``None`` when paused or when it has none).
        updated_at: when its record was last written.
    """

    name: str
    workflow: str
    cron: str
    timezone: str
    params: Any
    overlap: str
    catch_up: str
    paused: bool
    last_tick: datetime | None
    last_run_id: str | None
    next_tick: datetime | None
    updated_at: datetime | None
