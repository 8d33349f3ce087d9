"""The supervisor: restarts crashed actors within a budget, escalates past it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from stemd import RestartBudgetExceeded, RestartPolicy
from stemd._actors.supervisor import Supervisor

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

pytestmark = pytest.mark.anyio

FAST = RestartPolicy(max_restarts=3, window=60.0, backoff=0.001, max_backoff=0.002)


class Crashy:
    """An actor that crashes on its first ``crashes`` runs, then serves until cancelled."""

    def __init__(self, name: str, crashes: int, *, before_ready: bool = False) -> None:
        self.name = name
        self.crashes = crashes
        self.before_ready = before_ready
        self.runs = 0
        self.serving = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        if self.before_ready and self.runs <= self.crashes:
            raise RuntimeError(f"{self.name} failed to start")
        task_status.started()
        if self.runs <= self.crashes:
            await anyio.lowlevel.checkpoint()
            raise RuntimeError(f"{self.name} crash {self.runs}")
        self.serving.set()
        await anyio.sleep_forever()


async def test_restarts_a_crashing_actor_within_budget() -> None:
    """An actor that crashes fewer times than the budget is restarted until it serves."""
    flaky = Crashy("flaky", crashes=3)
    steady = Crashy("steady", crashes=0)
    restarted: list[str] = []
    supervisor = Supervisor([flaky, steady], FAST, on_restart=restarted.append)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            await flaky.serving.wait()
            await steady.serving.wait()
            tg.cancel_scope.cancel()
    assert flaky.runs == 4
    assert steady.runs == 1
    assert restarted == ["flaky"] * 3
    assert supervisor.statistics().restarts == {"flaky": 3, "steady": 0}


async def test_raises_past_the_restart_budget() -> None:
    """One crash more than the budget raises RestartBudgetExceeded and stops every actor."""
    doomed = Crashy("doomed", crashes=100)
    steady = Crashy("steady", crashes=0)
    supervisor = Supervisor([doomed, steady], FAST)

    async def supervise() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            await anyio.sleep_forever()

    with anyio.fail_after(5), pytest.raises(BaseExceptionGroup) as info:
        await supervise()
    assert info.group_contains(RestartBudgetExceeded)
    assert doomed.runs == FAST.max_restarts + 1
    assert steady.runs == 1


async def test_crashes_outside_the_window_do_not_count() -> None:
    """Only crashes within the policy's window count against the budget."""
    policy = RestartPolicy(max_restarts=1, window=0.05, backoff=0.06, max_backoff=0.06)
    flaky = Crashy("spaced", crashes=4)
    supervisor = Supervisor([flaky], policy)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            await flaky.serving.wait()
            tg.cancel_scope.cancel()
    assert flaky.runs == 5


async def test_actor_that_fails_before_ready_is_restarted() -> None:
    """An actor failing before it is ready is restarted; the supervisor is ready once it is."""
    slow = Crashy("slow-start", crashes=2, before_ready=True)
    supervisor = Supervisor([slow], FAST)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            assert slow.runs == 3
            await slow.serving.wait()
            tg.cancel_scope.cancel()


async def test_cancellation_is_not_a_crash() -> None:
    """Cancelling the supervisor stops its actors without restarting them."""
    steady = Crashy("steady", crashes=0)
    restarted: list[str] = []
    supervisor = Supervisor([steady], FAST, on_restart=restarted.append)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            await steady.serving.wait()
            tg.cancel_scope.cancel()
    assert steady.runs == 1
    assert restarted == []


async def test_actor_that_returns_is_not_restarted() -> None:
    """An actor whose run returns normally is done, not restarted."""

    class Once:
        name = "once"
        runs = 0

        async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            self.runs += 1
            task_status.started()

    once = Once()
    supervisor = Supervisor([once], FAST)
    with anyio.fail_after(5):
        await supervisor.run()
    assert once.runs == 1
    assert supervisor.statistics().restarts == {"once": 0}
