"""A live App's own runs survive its clock's forward jumps: no step still running is run
again, whatever the jump."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

import stemd
from tests.helpers import open_app, wait_status, wait_until

pytestmark = pytest.mark.anyio


class JumpingClock:
    """Wall-clock time that the test can jump; sleeps take real (monotonic) time, as on
    a live host whose clock is stepped."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    async def sleep_until(self, when: datetime) -> None:
        await anyio.sleep(max(0.0, (when - self.now()).total_seconds()))

    def jump(self, seconds: float) -> None:
        """Step the clock forward by ``seconds``."""
        self.offset += timedelta(seconds=seconds)


class Gate:
    """Holds the step until the test opens it; counts its starts."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.starts = 0


gate = Gate()
held = stemd.Flow("jump.held")


@held.step("long")
async def long_step(ctx: stemd.FlowContext) -> str:
    """Counts its start, then blocks until the gate opens."""
    gate.starts += 1
    await gate.event.wait()
    return "done"


@pytest.mark.parametrize("jump", [60.0, 7 * 24 * 3600.0])
async def test_a_forward_jump_never_reruns_a_running_step(jump: float) -> None:
    """The clock jumps forward (60 s, a week) while a step runs; the sweeper sweeps
    at the new time: the step is not started again and the run completes once."""
    gate.__init__()
    clock = JumpingClock()
    options = stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.05))
    async with open_app(held, clock=clock, options=options) as app:
        run_id = await app.start_workflow(held)
        await wait_status(app, run_id, stemd.RunStatus.RUNNING)
        assert app.sweeper is not None
        sweeps = app.sweeper.statistics().sweeps
        clock.jump(jump)

        async def swept() -> bool:  # ten sweeps at the new time
            assert app.sweeper is not None
            return app.sweeper.statistics().sweeps >= sweeps + 10

        await wait_until(swept, what="sweeps after the jump")
        assert gate.starts == 1
        gate.event.set()
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.value == "done"
    assert gate.starts == 1
    assert result.state is not None
    assert result.state.attempts == 1
