"""A run started where a worker of the process waits is created claimed and handed to
that worker (one write, no claim); a limited workflow's runs, a paused workflow's runs and
a degraded process's starts are not; a create claimed whose answer was lost is given back
once the store answers."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._broker.local import LocalBroker
from stemd._codec import codec_for
from stemd._engine.engine import Engine
from stemd._errors import TransportError
from stemd._model import RunStatus
from stemd._store.memory import MemoryStore
from stemd.testing import ManualClock
from tests.helpers import open_app, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from stemd._store.base import Claim, RunRecord, Store

pytestmark = pytest.mark.anyio

ran: Counter[str] = Counter()
plain = stemd.Flow("handoff.plain")
limited = stemd.Flow("handoff.limited", limits=stemd.Limits(concurrency=2))


@plain.step("only")
async def only(ctx: stemd.FlowContext) -> str:
    """Counts its runs."""
    ran[ctx.run_id] += 1
    return "done"


@limited.step("only")
async def limited_only(ctx: stemd.FlowContext) -> str:
    """Counts its runs."""
    ran[ctx.run_id] += 1
    return "done"


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store the App uses."""
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/h.db"


async def workers_wait(app: stemd.App, count: int = 1) -> None:
    """Until ``count`` of the App's workers wait for a run."""
    broker = app.engine.broker
    assert isinstance(broker, LocalBroker)

    async def waiting() -> bool:
        return broker.room(app.queue) >= count

    await wait_until(waiting, what="the workers to wait")


def count_claims(store: Store) -> Counter[str]:
    """Count the store's claims, by run id."""
    real = store.claim
    claims: Counter[str] = Counter()

    async def claim(run_id: str, owner: str, now: datetime, lease: float) -> Claim | None:
        claims[run_id] += 1
        return await real(run_id, owner, now, lease)

    store.claim = claim  # type: ignore[method-assign]
    return claims


async def test_a_run_started_where_a_worker_waits_is_created_claimed(store_url: str) -> None:
    """No claim: the run is written RUNNING under the App's owner and its worker runs it
    at once, once; a limited workflow's run is claimed (its slots go with the claim)."""
    async with stemd.App(store=store_url, workflows=[plain, limited]) as app:
        inner: Any = app.engine.store
        claims = count_claims(getattr(inner, "inner", inner))
        await workers_wait(app)
        run_id = await app.start_workflow(plain)
        done = await app.wait_for_completion(run_id, timeout=5)
        state = await app.get_run(run_id)
        held = await app.start_workflow(limited)
        also = await app.wait_for_completion(held, timeout=5)
    assert done.is_completed, done
    assert state is not None
    assert (state.attempts, ran[run_id], claims[run_id]) == (1, 1, 0)
    assert also.is_completed, also
    assert (ran[held], claims[held]) == (1, 1)


async def test_a_paused_workflows_run_waits_for_the_resume(store_url: str) -> None:
    """A run of a workflow paused for new runs, started where a worker waits, does not
    run its step before the workflow is resumed; then it completes."""
    async with stemd.App(store=store_url, workflows=[plain]) as app:
        await app.pause_runs(workflow=plain.name, new_runs=True)
        await workers_wait(app)
        run_id = await app.start_workflow(plain)
        await anyio.sleep(0.2)  # a step would have run by now
        state = await app.get_run(run_id)
        assert state is not None
        assert (state.status, state.paused, ran[run_id]) == (RunStatus.PENDING, True, 0)
        await app.resume_runs(workflow=plain.name, new_runs=True)
        done = await app.wait_for_completion(run_id, timeout=5)
    assert done.is_completed, done
    assert ran[run_id] == 1


class _LostCreate(MemoryStore):
    """A memory store that writes the next create and then fails as a lost answer."""

    lose = True

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        stored = await super().create_run(record)
        if self.lose:
            self.lose = False
            raise TransportError("nats: timeout (the answer of the create was lost)")
        return stored


async def test_a_claimed_create_whose_answer_was_lost_is_given_back() -> None:
    """The start fails, but the run was written claimed under this engine's owner: it is
    an unsure claim, given back once the store answers, and then runs."""
    store = _LostCreate()
    broker = LocalBroker()
    engine = Engine(
        store=store,
        broker=broker,
        codec=codec_for("json"),
        clock=ManualClock(datetime(2030, 1, 1, tzinfo=UTC)),
        workflows={plain.name: plain},
        owner="daemon-a",
        lease=3600.0,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(broker.receive, "workflow")  # a worker waits
        await anyio.sleep(0.01)
        with pytest.raises(TransportError):
            await engine.start_run(plain.name, run_id="lost-create")
        tg.cancel_scope.cancel()
    rec = await store.get_run("lost-create")
    assert rec is not None
    assert (rec.status, rec.lease_owner) == (RunStatus.RUNNING, "daemon-a")
    assert await engine.release_orphans() == 0
    given = await store.get_run("lost-create")
    assert given is not None
    assert given.status is RunStatus.PENDING
    done = await engine.advance("lost-create")
    assert done is not None
    assert done.status is RunStatus.COMPLETED


async def test_runs_started_in_a_burst_are_handed_to_idle_workers_only() -> None:
    """Ten runs started at once where two workers wait: at most two are created claimed
    (the others go through the queue, free for any worker), and all complete."""
    async with open_app(plain, concurrency=2) as app:
        claims = count_claims(app.engine.store)
        await workers_wait(app, 2)
        ids: list[str] = []

        async def start() -> None:
            ids.append(await app.start_workflow(plain))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(start)
        for run_id in ids:
            assert (await app.wait_for_completion(run_id, timeout=5)).is_completed
    assert sum(1 for run_id in ids if claims[run_id] == 0) <= 2
    assert all(ran[run_id] == 1 for run_id in ids)
