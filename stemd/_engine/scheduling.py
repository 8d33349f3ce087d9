"""Schedules against a store: register them, deal with their due ticks, pause, resume and
trigger them.

Exactly one run per tick, across any number of daemons: a tick's run id is derived from
the schedule's name and the tick's instant (:func:`tick_run_id`), and creating a run is
idempotent on its id, so when two daemons start the same tick one creates the run and
the other finds it. The schedule's record (its last tick, last run, paused flag) is
written by compare-and-set and only moves forward; a daemon killed between starting a
tick's run and recording the tick starts that tick again on its next look, which
creates nothing.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import msgspec
import structlog

from stemd._codec import check_depth
from stemd._cron import parse_cron, zone
from stemd._engine.params import check_params
from stemd._engine.views import new_run_id
from stemd._errors import StemError, StoreError
from stemd._store.schedules import ScheduleRecord, ScheduleStore

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from stemd._engine.engine import Engine
    from stemd._schedules import Schedule

__all__ = [
    "ScheduleNotFound",
    "check_schedules",
    "due_ticks",
    "register_schedules",
    "run_due",
    "schedule_store",
    "set_paused",
    "tick_run_id",
    "trigger",
]

log = structlog.get_logger("stemd.schedules")

_TRIES = 50
# Windows looked back over for the latest ticks of a schedule (a missed day of an
# every-second schedule is not enumerated tick by tick).
_WINDOWS = (60, 3600, 86_400, 32 * 86_400, 367 * 86_400, 9 * 367 * 86_400)


class ScheduleNotFound(StemError, LookupError):
    """There is no schedule of that name in the store."""


def tick_run_id(name: str, tick: datetime) -> str:
    """The run id of ``name``'s tick at ``tick``: ``name-YYYYmmddTHHMMSSZ`` (UTC)."""
    return f"{name}-{tick.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def schedule_store(engine: Engine) -> ScheduleStore:
    """The engine's store, as one that keeps schedules."""
    store = engine.store
    if not isinstance(store, ScheduleStore):
        raise StemError("this store does not keep schedules")
    return store


async def _update(
    store: ScheduleStore, name: str, change: Callable[[ScheduleRecord | None], ScheduleRecord]
) -> ScheduleRecord:
    """Compare-and-set ``change(current)`` until no other write comes in between."""
    for _ in range(_TRIES):
        current = await store.get_schedule(name)
        new = change(current)
        if new is current and current is not None:
            return current  # nothing to write
        stored = await store.put_schedule(new, current.revision if current is not None else 0)
        if stored is not None:
            return stored
    raise StoreError(f"schedule {name}: too many concurrent writes")


def check_schedules(engine: Engine, schedules: Sequence[Schedule]) -> list[bytes]:
    """Each schedule's params, encoded for its workflow.

    Raises:
        UnknownWorkflow: a schedule names a workflow not registered here.
        PayloadError: its params do not encode, or not into the workflow's params type.
    """
    out = []
    for schedule in schedules:
        name, definition = engine.resolve(schedule.workflow)
        codec = engine.codec_for(name)
        check_depth(schedule.params, f"schedule {schedule.name!r}: params")
        raw = codec.encode(schedule.params)
        check_params(name, definition, raw, codec)
        out.append(raw)
    return out


async def register_schedules(engine: Engine, schedules: Sequence[Schedule]) -> None:
    """Record each schedule's definition, keeping the state of one already recorded
    (a new one starts from now: it catches nothing up).

    Raises:
        UnknownWorkflow: a schedule names a workflow not registered here.
        PayloadError: its params do not encode, or not into the workflow's params type.
    """
    store = schedule_store(engine)
    encoded = list(zip(schedules, check_schedules(engine, schedules), strict=True))
    now = engine.clock.now()
    for schedule, raw in encoded:

        def change(
            current: ScheduleRecord | None, s: Schedule = schedule, raw: bytes = raw
        ) -> ScheduleRecord:
            fields = {
                "workflow": s.workflow,
                "cron": s.cron,
                "timezone": s.timezone,
                "params": raw,
                "overlap": s.overlap,
                "catch_up": s.catch_up,
                "catch_up_limit": s.catch_up_limit,
                "grace": s.grace,
                "updated_at": now,
            }
            if current is None:
                return ScheduleRecord(name=s.name, last_tick=now, **fields)
            return msgspec.structs.replace(current, **fields)

        await _update(store, schedule.name, change)


def due_ticks(record: ScheduleRecord, now: datetime) -> list[datetime]:
    """The last ``catch_up_limit`` ticks after the record's last tick and at or before
    ``now``, oldest first."""
    cron = parse_cron(record.cron)
    tz = zone(record.timezone)
    last = record.last_tick or now
    found: deque[datetime] = deque(maxlen=record.catch_up_limit)
    for window in _WINDOWS:
        start = max(last, now - timedelta(seconds=window))
        found.clear()
        tick = cron.next_after(start, tz)
        while tick is not None and tick <= now:
            found.append(tick)
            tick = cron.next_after(tick, tz)
        if start == last or len(found) == found.maxlen:
            break
    return list(found)


def _to_start(record: ScheduleRecord, due: list[datetime], now: datetime) -> list[datetime]:
    """Which due ticks start, by the catch-up policy: those on time (at most ``grace``
    late) always; the late ones all (``all``), the latest (``latest``), or none."""
    if record.catch_up == "all":
        return due
    on_time = [t for t in due if (now - t).total_seconds() <= record.grace]
    if on_time or record.catch_up == "skip" or not due:
        return on_time
    return due[-1:]


async def _may_start(engine: Engine, record: ScheduleRecord, previous: str | None) -> bool:
    """The overlap policy: whether a tick starts while ``previous`` may still run
    (cancelling it first under ``cancel``)."""
    if record.overlap == "allow" or previous is None:
        return True
    prev = await engine.store.get_run(previous)
    if prev is None or prev.status.is_terminal:
        return True
    if record.overlap == "skip":
        log.info("tick skipped: the previous run has not ended", schedule=record.name)
        return False
    await engine.cancel(previous, f"schedule {record.name}: overlapped by a later tick")
    return True


async def run_due(engine: Engine, name: str) -> ScheduleRecord | None:
    """Deal with the due ticks of schedule ``name`` (start, skip or miss them) and record
    the last; return the record (``None``: no such schedule)."""
    store = schedule_store(engine)
    record = await store.get_schedule(name)
    if record is None:
        return None
    now = engine.clock.now()
    due = due_ticks(record, now)
    if not due:
        return record
    previous = record.last_run_id
    started: str | None = None
    if not record.paused:
        for tick in _to_start(record, due, now):
            if not await _may_start(engine, record, previous):
                continue
            run_id, _ = await engine.start_run(
                record.workflow, encoded_params=record.params, run_id=tick_run_id(name, tick)
            )
            previous = started = run_id
    last = due[-1]

    def change(current: ScheduleRecord | None) -> ScheduleRecord:
        base = current or record
        if base.last_tick is not None and base.last_tick >= last:
            return base  # another daemon got further: keep its state
        fields: dict[str, object] = {"last_tick": last, "updated_at": engine.clock.now()}
        if started is not None:
            fields["last_run_id"] = started
        return msgspec.structs.replace(base, **fields)

    return await _update(store, name, change)


async def _existing(store: ScheduleStore, name: str) -> ScheduleRecord:
    record = await store.get_schedule(name)
    if record is None:
        raise ScheduleNotFound(f"no schedule {name!r}")
    return record


async def set_paused(engine: Engine, name: str, paused: bool) -> ScheduleRecord:
    """Pause or resume schedule ``name``. A resumed schedule starts from now: the ticks
    of its pause are not caught up.

    Raises:
        ScheduleNotFound: there is no such schedule.
    """
    store = schedule_store(engine)
    await _existing(store, name)
    now = engine.clock.now()

    def change(current: ScheduleRecord | None) -> ScheduleRecord:
        if current is None:
            raise ScheduleNotFound(f"no schedule {name!r}")
        last = current.last_tick
        if not paused and current.paused:
            last = now if last is None else max(last, now)
        return msgspec.structs.replace(current, paused=paused, last_tick=last, updated_at=now)

    return await _update(store, name, change)


async def trigger(engine: Engine, name: str, run_id: str | None = None) -> str:
    """Start a run of schedule ``name`` now, out of its ticks (also when it is paused);
    ``run_id`` makes it idempotent (default ``name-manual-<random>``). Return its id.

    Raises:
        ScheduleNotFound: there is no such schedule.
    """
    store = schedule_store(engine)
    record = await _existing(store, name)
    wanted = run_id if run_id is not None else f"{name}-manual-{new_run_id()[-12:]}"
    started, _ = await engine.start_run(
        record.workflow, encoded_params=record.params, run_id=wanted
    )

    def change(current: ScheduleRecord | None) -> ScheduleRecord:
        base = current or record
        return msgspec.structs.replace(base, last_run_id=started, updated_at=engine.clock.now())

    await _update(store, name, change)
    return started
