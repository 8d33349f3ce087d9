"""Outages are not crashes: the supervisor retries an actor stopped by one without
spending its restart budget, reports it degraded and ready again, and the state changes
are logged once each."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import anyio
import pytest
import structlog

import stemd
from stemd import RestartBudgetExceeded, RestartPolicy
from stemd._actors.supervisor import Supervisor
from stemd._errors import LeaseLost, PermissionDenied, StoreError, TransportError
from stemd._health import Health, HealthState, outage_of

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

pytestmark = pytest.mark.anyio

FAST = RestartPolicy(max_restarts=2, window=60.0, backoff=0.001, max_backoff=0.002)


def _full() -> StoreError:
    try:
        raise sqlite3.OperationalError("database or disk is full")
    except sqlite3.OperationalError as exc:
        error = StoreError(f"SQLite write failed: {exc!r}")
        error.__cause__ = exc
        return error


@pytest.mark.parametrize(
    ("exc", "dependency"),
    [
        (TransportError("request to x: TimeoutError"), "nats"),
        (_full(), "store"),
        (StoreError("SQLite database is locked: database is locked"), "store"),
        (OSError(28, "No space left on device"), "store"),
        (PermissionDenied("publish to x"), None),
        (LeaseLost("run r: lease lost"), None),
        (RuntimeError("a bug"), None),
        (StoreError("run r: gave up after 8 conflicting writes"), None),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_outage_of_tells_an_outage_from_a_bug(exc: Exception, dependency: str | None) -> None:
    """NATS away, a full or locked store, a file system error are outages; others are not."""
    assert outage_of(exc) == dependency


@pytest.mark.usefixtures("default_logging")
def test_health_logs_each_change_once_and_clears_per_source() -> None:
    """Many reports of one outage log one `degraded`; the last source clearing logs one
    `recovered`; listeners see each change."""
    health = Health()
    seen: list[HealthState] = []
    health.subscribe(seen.append)
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):
            health.report("timer", "nats", TransportError("gone"))
            health.report("sweeper", "nats", "gone too")
        assert not health.ready
        assert health.state().describe() == "degraded (nats: gone)"
        health.clear("timer")
        assert not health.ready
        health.clear("sweeper")
        health.clear("sweeper")
    assert health.ready
    assert [e["event"] for e in logs] == ["degraded", "recovered"]
    assert [s.state for s in seen] == ["degraded", "ready"]
    assert health.state().changes == 2


class Outage:
    """An actor that meets an outage on its first ``outages`` runs, then serves."""

    def __init__(self, outages: int, exc: Exception) -> None:
        self.name = "sweeper"
        self.outages = outages
        self.exc = exc
        self.runs = 0
        self.serving = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.runs += 1
        if self.runs > 1 and self.runs <= self.outages:
            raise self.exc  # still away: fails before it is ready again
        task_status.started()
        if self.runs <= self.outages:
            await anyio.lowlevel.checkpoint()
            raise self.exc
        self.serving.set()
        await anyio.sleep_forever()


@pytest.mark.parametrize("exc", [TransportError("nats: timeout"), _full()], ids=["nats", "disk"])
async def test_an_outage_spends_no_restart_budget_and_is_reported(exc: Exception) -> None:
    """Twenty failures of an outage (budget: two) are retried; the actor is degraded
    until it has run `settle` seconds again, then ready; nothing counts as a restart."""
    actor = Outage(20, exc)
    health = Health()
    states: list[str] = []
    health.subscribe(lambda s: states.append(s.state))
    supervisor = Supervisor([actor], FAST, health=health, settle=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
            await actor.serving.wait()
            assert not health.ready
            await health.wait_ready()
            tg.cancel_scope.cancel()
    assert actor.runs == 21
    assert states == ["degraded", "ready"]
    assert supervisor.statistics().restarts == {"sweeper": 0}


async def test_a_bug_still_spends_the_budget() -> None:
    """An actor crashing with a bug (not an outage) stops the supervisor past the budget."""
    actor = Outage(20, RuntimeError("unable to do a thing"))
    supervisor = Supervisor([actor], FAST, health=Health())
    with anyio.fail_after(5), pytest.raises(ExceptionGroup) as caught:
        async with anyio.create_task_group() as tg:
            await tg.start(supervisor.run)
    assert caught.group_contains(RestartBudgetExceeded)
    assert actor.runs == 3


async def test_workers_take_no_run_while_degraded_and_resume_when_ready() -> None:
    """Degraded: a started run is not claimed (until the first trial, 0.5 s on); once
    ready again it runs at once."""
    flow = stemd.Flow("health.flow")

    @flow.step("only")
    async def only(ctx: stemd.FlowContext) -> int:
        """One."""
        return 1

    async with stemd.App(store="memory://", workflows=[flow]) as app:
        app.health.report("test", "store", "away")
        run_id = await app.start_workflow("health.flow")
        await anyio.sleep(0.3)  # shorter than the first trial: nothing may claim it
        state = await app.get_run(run_id)
        assert state is not None
        assert state.status is stemd.RunStatus.PENDING
        app.health.clear("test")
        result = await app.wait_for_completion(run_id, timeout=5)
        assert result.status is stemd.RunStatus.COMPLETED
