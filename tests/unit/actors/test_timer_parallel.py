"""The timer fires wake-ups due together concurrently (a store commits them together):
one after the other, they capped the wake-ups per second at one over the store's write
latency, and wake-ups due at once queued up (bench/sleepers.py on JetStream)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import anyio
import pytest

import stemd
from stemd.store.base import FireResult
from stemd.store.memory import MemoryStore
from stemd.testing import ManualClock
from tests.helpers import open_app

pytestmark = pytest.mark.anyio


class SlowFiring(MemoryStore):
    """A memory store whose timer firings take a while, counting how many overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.peak = 0

    async def fire_timer(self, run_id: str, now: datetime, timeout_value: bytes) -> FireResult:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await anyio.sleep(0.01)
            return await super().fire_timer(run_id, now, timeout_value)
        finally:
            self.running -= 1


@stemd.script("nap.script")
async def nap(ctx: stemd.ScriptContext, params: Any) -> str:
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
