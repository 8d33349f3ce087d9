"""The worker pool's lease keeper renews long slices and stops fenced ones."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

import stemd
from stemd._actors.sessions import CLAIM_HOLD
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio


class Gate:
    """Holds the step until the test opens it, and counts what ran after it."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.after = 0


gate = Gate()
slow = stemd.Flow("keeper.slow")


@slow.step("long")
async def long_step(ctx: stemd.FlowContext) -> str:
    """Blocks until the gate opens, then counts itself."""
    await gate.event.wait()
    gate.after += 1
    return "done"


async def test_a_slice_longer_than_its_lease_keeps_it() -> None:
    """While a step outlasts many leases, its run stays held (the session keeps it, with
    no renewal per run until a third of the claim's hold) and completes without being
    taken over; past that third the keeper renews the claim."""
    gate.__init__()
    clock = ManualClock()
    async with open_app(
        slow, clock=clock, options=stemd.AppOptions(timing=stemd.Timing(lease=3.0))
    ) as app:
        assert app.engine.leases.running
        run_id = await app.start_workflow(slow)
        state = await wait_status(app, run_id, stemd.RunStatus.RUNNING)
        first = state.lease_expires_at
        assert first is not None
        for _ in range(6):  # 6 s of clock time: two leases
            clock.advance(1.0)
            await anyio.sleep(0.01)
        assert await app.store.claim(run_id, "intruder", clock.now(), 3.0) is None
        clock.advance(CLAIM_HOLD / 3)

        async def renewed() -> bool:
            rec = await app.get_run(run_id)
            return (
                rec is not None
                and rec.lease_expires_at is not None
                and (rec.lease_expires_at > first + timedelta(seconds=CLAIM_HOLD / 3))
            )

        await wait_until(renewed, what="the claim to be renewed")
        assert await app.store.claim(run_id, "intruder", clock.now(), 3.0) is None
        gate.event.set()
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "done"
    assert gate.after == 1
    assert result.state is not None
    assert result.state.attempts == 1


async def test_a_fenced_slice_is_stopped_by_the_keeper() -> None:
    """When another owner takes the run (here: a rewind), the keeper's next renewal is
    refused and the slice is cancelled before its step goes on."""
    gate.__init__()
    clock = ManualClock()
    async with open_app(
        slow,
        clock=clock,
        options=stemd.AppOptions(timing=stemd.Timing(lease=3.0)),
        workers=True,
        concurrency=1,
    ) as app:
        run_id = await app.start_workflow(slow)
        await wait_status(app, run_id, stemd.RunStatus.RUNNING)
        rec = await app.store.get_run(run_id)
        assert rec is not None
        # Fence the slice out: the token moves on, as a takeover or a cancel would do.
        await app.store.cancel(run_id, "operator", clock.now())
        clock.advance(1.0)
        clock.advance(1.0)

        async def stopped() -> bool:
            assert app.pool is not None
            return app.pool.statistics().busy == 0

        await wait_until(stopped, what="the fenced slice to stop")
        # The slice's task has ended: opening the gate cannot run the rest of the step.
        gate.event.set()
    assert gate.after == 0
