"""The timer at scale (bench/sleepers.py): wake-ups due together are fired concurrently (a
store commits them together), and the heap holds only the next minute's wake-ups, the
later ones being loaded from the store in time, however many a refill may load."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._store.memory import MemoryStore
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._store.base import FireResult, TimeoutValue

pytestmark = pytest.mark.anyio


class SlowFiring(MemoryStore):
    """A memory store whose timer firings take a while, counting how many overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.peak = 0

    async def fire_timer(self, run_id: str, now: datetime, timeout: TimeoutValue) -> FireResult:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await anyio.sleep(0.01)
            return await super().fire_timer(run_id, now, timeout)
        finally:
            self.running -= 1


@stemd.script("nap.script")
async def nap(ctx: stemd.ScriptContext, params: Any) -> str:
    """Sleeps durably for 10 s."""
    await ctx.sleep(10)
    return "awake"


async def test_wake_ups_due_together_are_fired_together() -> None:
    """Twenty runs waking at the same instant are fired concurrently, and all complete."""
    store = SlowFiring()
    clock = ManualClock()
    async with open_app(nap, clock=clock, store=store) as app:
        ids = [await app.start_workflow("nap.script") for _ in range(20)]

        async def asleep() -> bool:
            states = [await app.get_run(i) for i in ids]
            return all(s is not None and s.status is stemd.RunStatus.SUSPENDED for s in states)

        with anyio.fail_after(5):
            while not await asleep():  # noqa: ASYNC110 - the store offers no event
                await anyio.sleep(0.005)
        clock.advance(10)
        for run_id in ids:
            assert (await app.wait_for_completion(run_id, timeout=5)).value == "awake"
    assert store.peak > 1


@stemd.script("long.nap")
async def long_nap(ctx: stemd.ScriptContext, params: Any) -> str:
    """Sleeps durably for ``params`` seconds."""
    await ctx.sleep(float(params))
    return "awake"


async def test_a_wake_up_beyond_the_horizon_is_not_held_and_still_fires() -> None:
    """An hour's sleep takes no heap entry while far off, and wakes on time."""
    clock = ManualClock()
    async with open_app(long_nap, clock=clock) as app:
        run_id = await app.start_workflow("long.nap", 3600)
        await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)
        assert app.timer is not None
        assert app.timer.statistics().scheduled == 0
        clock.advance(3600)
        assert (await app.wait_for_completion(run_id, timeout=5)).value == "awake"


async def test_more_wake_ups_than_a_refill_loads_all_fire() -> None:
    """With refills of 3 wake-ups, ten sleeping runs beyond the horizon all wake."""
    clock = ManualClock()
    async with open_app(long_nap, clock=clock) as app:
        assert app.timer is not None
        app.timer.batch = 3
        ids = [await app.start_workflow("long.nap", 100 + i) for i in range(10)]
        for run_id in ids:
            await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)
        for _ in range(130):  # a clock that moves a second at a time, as real ones do
            clock.advance(1)
            await anyio.sleep(0.002)
        for run_id in ids:
            assert (await app.wait_for_completion(run_id, timeout=5)).value == "awake"
