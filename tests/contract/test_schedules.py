"""Schedules (issue 13): state kept by compare-and-set, one run per tick across apps,
catch-up and overlap policies, pause, resume and trigger, on every store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._store.schedules import ScheduleRecord, ScheduleStore
from stemd.testing import ManualClock
from tests.helpers import wait_until

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio

START = datetime(2030, 1, 1, tzinfo=UTC)


def _flows() -> tuple[stemd.Flow, stemd.Flow]:
    quick = stemd.Flow("sched.quick")

    @quick.step("only")
    async def only(ctx: stemd.FlowContext) -> Any:
        return ctx.params

    slow = stemd.Flow("sched.slow")

    @slow.step("wait")
    async def wait(ctx: stemd.FlowContext) -> Any:
        return await ctx.wait_for_event(f"sched.done.{ctx.run_id}")

    return quick, slow


def _app(store: Store, clock: ManualClock, *schedules: stemd.Schedule) -> stemd.App:
    return stemd.App(store=store, workflows=_flows(), clock=clock, schedules=schedules)


async def _ids(app: stemd.App) -> list[str]:
    return sorted(r.run_id for r in await app.list_runs(limit=1000))


async def _settled(app: stemd.App, name: str, at: datetime) -> None:
    """Wait until schedule ``name`` has dealt with its ticks up to ``at``."""

    async def done() -> bool:
        info = await app.get_schedule(name)
        return info is not None and info.last_tick is not None and info.last_tick >= at

    await wait_until(done, what=f"schedule {name} to reach {at}")


async def test_schedule_records_are_written_by_compare_and_set(store: Store) -> None:
    """A put over a stale revision changes nothing; the stored record comes back with
    its new revision; list gives every schedule by name."""
    assert isinstance(store, ScheduleStore)
    first = ScheduleRecord(name="b", workflow="w", cron="@daily")
    created = await store.put_schedule(first, 0)
    assert created is not None
    assert created.revision > 0
    assert await store.put_schedule(first, 0) is None
    moved = await store.put_schedule(
        ScheduleRecord(name="b", workflow="w", cron="@daily", paused=True), created.revision
    )
    assert moved is not None
    assert moved.paused
    assert moved.revision != created.revision
    assert await store.put_schedule(first, created.revision) is None
    assert await store.put_schedule(ScheduleRecord(name="a", workflow="w", cron="@hourly"), 0)
    got = await store.get_schedule("b")
    assert got is not None
    assert got.paused
    assert got.revision == moved.revision
    assert [r.name for r in await store.list_schedules()] == ["a", "b"]
    assert await store.get_schedule("nope") is None


async def test_two_apps_start_each_tick_exactly_once(store: Store) -> None:
    """Two apps serving one schedule on one store: every tick's run is created once,
    with the id made of the schedule's name and the tick."""
    clock = ManualClock(START)
    schedule = stemd.Schedule("every", "sched.quick", "* * * * *", {"n": 1}, overlap="allow")
    async with _app(store, clock, schedule) as one, _app(store, clock, schedule) as two:
        for minute in range(1, 6):
            clock.advance(60)
            await _settled(one, "every", START + timedelta(minutes=minute))
            await anyio.sleep(0.01)  # the other app looks at the tick too
        ids = await _ids(two)
        result = await one.wait_for_completion(ids[0], timeout=5)
    assert ids == [f"every-20300101T00{m:02d}00Z" for m in range(1, 6)]
    assert result.value == {"n": 1}


@pytest.mark.parametrize(
    ("catch_up", "expected"), [("skip", []), ("latest", [5]), ("all", [1, 2, 3, 4, 5])]
)
async def test_catch_up_after_downtime(store: Store, catch_up: str, expected: list[int]) -> None:
    """Ticks missed while no app ran start as the catch-up policy says: none, the
    latest, or all of them; the schedule's state survives the restart."""
    clock = ManualClock(START)
    schedule = stemd.Schedule(
        "hourly", "sched.quick", "0 * * * *", overlap="allow", catch_up=catch_up
    )
    async with _app(store, clock, schedule) as app:
        assert await _ids(app) == []
    clock.advance(timedelta(hours=5, minutes=30))
    async with _app(store, clock, schedule) as app:
        await _settled(app, "hourly", START + timedelta(hours=5))
        ids = await _ids(app)
    assert ids == [f"hourly-20300101T{h:02d}0000Z" for h in expected]


async def test_overlap_skip_and_cancel(store: Store) -> None:
    """overlap='skip' passes a tick while the previous run goes on; 'cancel' cancels
    the previous run and starts the new one."""
    clock = ManualClock(START)
    skip = stemd.Schedule("skipper", "sched.slow", "* * * * *", overlap="skip")
    cancel = stemd.Schedule("canceller", "sched.slow", "* * * * *", overlap="cancel")
    async with _app(store, clock, skip, cancel) as app:
        for minute in (1, 2):
            clock.advance(60)
            for name in ("skipper", "canceller"):
                await _settled(app, name, START + timedelta(minutes=minute))
        ids = await _ids(app)
        first = await app.get_run("canceller-20300101T000100Z")
    assert ids == [
        "canceller-20300101T000100Z",
        "canceller-20300101T000200Z",
        "skipper-20300101T000100Z",
    ]
    assert first is not None
    assert first.status is stemd.RunStatus.CANCELLED
    assert first.cancel_reason is not None
    assert "canceller" in first.cancel_reason


async def test_pause_resume_and_trigger(store: Store) -> None:
    """A paused schedule starts nothing and its pause is not caught up on resume; a
    trigger starts a run at once, paused or not; an unknown name is ScheduleNotFound."""
    clock = ManualClock(START)
    schedule = stemd.Schedule("pausable", "sched.quick", "* * * * *", catch_up="all")
    async with _app(store, clock, schedule) as app:
        paused = await app.pause_schedule("pausable")
        assert paused.paused
        assert paused.next_tick is None
        clock.advance(180)
        await _settled(app, "pausable", START + timedelta(minutes=3))
        assert await _ids(app) == []
        triggered = await app.trigger_schedule("pausable", run_id="by-hand")
        resumed = await app.resume_schedule("pausable")
        assert not resumed.paused
        assert resumed.next_tick == START + timedelta(minutes=4)
        clock.advance(60)
        await _settled(app, "pausable", START + timedelta(minutes=4))
        ids = await _ids(app)
        with pytest.raises(stemd.ScheduleNotFound):
            await app.pause_schedule("nope")
        with pytest.raises(stemd.ScheduleNotFound):
            await app.trigger_schedule("nope")
    assert triggered == "by-hand"
    assert ids == ["by-hand", "pausable-20300101T000400Z"]


async def test_a_schedule_of_an_unknown_workflow_stops_the_app_and_writes_nothing(
    store: Store,
) -> None:
    """An app whose schedule names a workflow it does not know fails to open with
    UnknownWorkflow, and records no schedule."""
    bad = stemd.Schedule("orphan", "no.such.flow", "@daily")
    with pytest.raises(stemd.UnknownWorkflow):
        async with _app(store, ManualClock(START), bad):
            pass
    assert isinstance(store, ScheduleStore)
    await store.open()  # the app closed it
    assert await store.list_schedules() == []
