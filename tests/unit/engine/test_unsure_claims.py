"""A claim written to the store whose answer was lost (the store or NATS went away as it
was made) leaves the run RUNNING under this process's live session: it is given back once
the store answers, not held until its claim's lease (an hour with sessions) runs out."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

import stemd
from stemd._codec import codec_for
from stemd._engine.engine import Engine
from stemd._engine.limits import LimitedStore
from stemd._errors import TransportError
from stemd._model import RunStatus
from stemd._store import store_from_url
from stemd._store.base import Claim, Store
from stemd._store.jetstream import JetStreamStore
from stemd.testing import ManualClock
from tests.stores import shared_nats_server

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

START = datetime(2030, 1, 1, tzinfo=UTC)

unsure = stemd.Flow("unsure.claim")
limited = stemd.Flow("unsure.limited", limits=stemd.Limits(concurrency=1))
# Started where a worker waits, a run is created claimed (no claim call): this one is
# claimed after its sleep.
resumed = stemd.Flow("unsure.resumed")


@unsure.step("only")
async def only(ctx: stemd.FlowContext) -> str:
    """Returns ``"ran"``."""
    return "ran"


@limited.step("only")
async def limited_only(ctx: stemd.FlowContext) -> str:
    """Returns ``"ran"``."""
    return "ran"


@resumed.step("nap")
async def nap(ctx: stemd.FlowContext) -> str:
    """Sleeps a moment (durably), then returns ``"ran"``."""
    await ctx.sleep(0.05)
    return "ran"


ClaimCall = Callable[[str, str, datetime, float], Awaitable[Claim | None]]


def lose_replies(store: Store, run_ids: set[str], *, written: bool = True) -> list[str]:
    """Make the store's next claim of each of ``run_ids`` fail as a lost answer does: the
    real claim is made (unless not ``written``), then the outage error is raised. Return
    the list of the run ids whose answer was lost so far."""
    real: ClaimCall = store.claim
    lost: list[str] = []

    async def claim(run_id: str, owner: str, now: datetime, lease: float) -> Claim | None:
        if run_id not in run_ids:
            return await real(run_id, owner, now, lease)
        run_ids.discard(run_id)
        if written:
            await real(run_id, owner, now, lease)
        lost.append(run_id)
        raise TransportError("nats: timeout (the answer of the claim was lost)")

    store.claim = claim  # type: ignore[method-assign]
    return lost


def _engine(store: Store, clock: ManualClock, owner: str = "daemon-a") -> Engine:
    return Engine(
        store=store,
        broker=None,
        codec=codec_for("json"),
        clock=clock,
        workflows={unsure.name: unsure, limited.name: limited},
        owner=owner,
        lease=3600.0,
    )


async def test_a_claim_whose_answer_was_lost_is_given_back(store: Store) -> None:
    """The run of a claim written but answered by an outage error stays RUNNING under the
    engine's owner until release_orphans, which gives it back; it then runs to the end."""
    clock = ManualClock(START)
    engine = _engine(store, clock)
    run_id, _ = await engine.start_run(unsure.name, run_id="lost-1")
    lose_replies(store, {run_id})
    with pytest.raises(TransportError):
        await engine.advance(run_id)
    rec = await store.get_run(run_id)
    assert rec is not None
    assert (rec.status, rec.lease_owner) == (RunStatus.RUNNING, "daemon-a")
    assert await engine.advance(run_id) is None  # held by the claim that was lost

    assert await engine.release_orphans() == 0
    given = await store.get_run(run_id)
    assert given is not None
    assert given.status is not RunStatus.RUNNING
    done = await engine.advance(run_id)
    assert done is not None
    assert done.status is RunStatus.COMPLETED


async def test_a_claim_that_failed_unwritten_is_forgotten(store: Store) -> None:
    """A claim that failed before it was written is forgotten once two reads found the run
    not held: nothing is committed, and the run is claimed as usual."""
    clock = ManualClock(START)
    engine = _engine(store, clock)
    run_id, _ = await engine.start_run(unsure.name, run_id="lost-2")
    before = await store.get_run(run_id)
    lose_replies(store, {run_id}, written=False)
    with pytest.raises(TransportError):
        await engine.advance(run_id)
    assert await engine.release_orphans() == 1  # a read might lag: checked again
    assert await engine.release_orphans() == 0
    assert await store.get_run(run_id) == before
    done = await engine.advance(run_id)
    assert done is not None
    assert done.status is RunStatus.COMPLETED


async def test_a_run_taken_by_another_owner_is_left_alone(store: Store) -> None:
    """An unsure claim of a run another owner holds now gives nothing back, and is
    forgotten after two reads."""
    clock = ManualClock(START)
    engine = _engine(store, clock)
    run_id, _ = await engine.start_run(unsure.name, run_id="lost-3")
    lose_replies(store, {run_id}, written=False)
    with pytest.raises(TransportError):
        await engine.advance(run_id)
    other = await store.claim(run_id, "daemon-b", clock.now(), 3600.0)
    assert other is not None
    assert await engine.release_orphans() == 1
    assert await engine.release_orphans() == 0
    rec = await store.get_run(run_id)
    assert rec is not None
    assert (rec.status, rec.lease_owner, rec.token) == (RunStatus.RUNNING, "daemon-b", other.token)


async def test_a_lost_claim_of_a_limited_run_frees_its_slot(store: Store) -> None:
    """Under a concurrency limit of 1, a claim written but answered by an outage error
    holds no slot: the run given back, it and another run of its workflow complete."""
    clock = ManualClock(START)
    flows = {limited.name: stemd.Limits(concurrency=1)}
    engine = _engine(LimitedStore(store, flows, {}, codec_for("json"), patience=0), clock)
    first, _ = await engine.start_run(limited.name, run_id="lost-limited-1")
    second, _ = await engine.start_run(limited.name, run_id="lost-limited-2")
    lose_replies(store, {first})
    with pytest.raises(TransportError):
        await engine.advance(first)
    assert await engine.release_orphans() == 0
    for run_id in (second, first):
        done = await engine.advance(run_id)
        assert done is not None
        assert done.status is RunStatus.COMPLETED


@asynccontextmanager
async def _unopened(kind: str, tmp: Path) -> AsyncIterator[Store]:
    if kind == "sqlite":
        yield store_from_url("sqlite:///" + str(tmp / "stemd.db"))
        return
    server = await shared_nats_server()
    store = JetStreamStore.from_url(f"{server.url}?bucket=t{secrets.token_hex(6)}")
    yield store


@pytest.mark.parametrize("kind", ["sqlite", "jetstream"])
async def test_an_app_with_sessions_gives_back_a_lost_claim_in_seconds(
    kind: str, tmp_path: Path
) -> None:
    """In an App with workers and sessions (claims held an hour), runs whose claims (after
    a sleep) were written but answered by an outage error complete within seconds."""
    async with _unopened(kind, tmp_path) as store:
        ids = {f"lost-app-{n}" for n in range(3)}
        lost = lose_replies(store, set(ids))
        async with stemd.App(store=store, workflows=[resumed]) as app:
            for run_id in sorted(ids):
                await app.start_workflow(resumed.name, run_id=run_id)
            for run_id in sorted(ids):
                result = await app.wait_for_completion(run_id, timeout=15)
                assert result.status is RunStatus.COMPLETED
        assert sorted(lost) == sorted(ids)
