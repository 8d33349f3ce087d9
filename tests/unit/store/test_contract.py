"""The Store contract: one suite, run against every kind of store (see tests/stores.py).

Everything here goes through the :class:`stemd._store.base.Store` protocol only, with time
passed in explicitly, so that every backend is held to the same behaviour.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import msgspec
import pytest

from stemd._errors import LeaseLost
from stemd._model import CancellationPolicy, ErrorInfo, RunStatus
from stemd._store.base import (
    Checkpoint,
    Claim,
    Complete,
    Fail,
    Release,
    RetryLater,
    RunRecord,
    Store,
    Suspend,
    WorkflowInfo,
    compute_timer_at,
)

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 1, tzinfo=UTC)
LEASE = 30.0
TIMEOUT = b'{"t":true}'


def at(secs: float) -> datetime:
    """The instant ``secs`` seconds after T0."""
    return T0 + timedelta(seconds=secs)


def enc(value: Any) -> bytes:
    """``value`` encoded as JSON."""
    return msgspec.json.encode(value)


def record(
    run_id: str = "r1",
    *,
    workflow: str = "wf",
    now: datetime = T0,
    **fields: Any,
) -> RunRecord:
    """A new PENDING run, as the engine would create it."""
    rec = RunRecord(
        run_id=run_id,
        workflow=workflow,
        status=RunStatus.PENDING,
        params=enc({"n": 1}),
        created_at=now,
        updated_at=now,
        **fields,
    )
    rec.timer_at = compute_timer_at(rec)
    return rec


async def started(
    store: Store, run_id: str = "r1", *, now: datetime = T0, owner: str = "w1", **fields: Any
) -> Claim:
    """Create ``run_id`` and claim it."""
    await store.create_run(record(run_id, now=now, **fields))
    claim = await store.claim(run_id, owner, now, LEASE)
    assert claim is not None
    return claim


async def suspended_on(
    store: Store, run_id: str, topic: str, *, now: datetime = T0, **fields: Any
) -> None:
    """Create ``run_id`` and leave it suspended on an event of ``topic``."""
    claim = await started(store, run_id, now=now, **fields)
    key = "review@event#0"
    await store.commit(run_id, claim.token, Suspend(wait_topic=topic, wait_key=key), now)


async def emit(
    store: Store,
    topic: str,
    value: bytes,
    now: datetime,
    *,
    retain: float | None = 3600.0,
    limit: int = 1000,
) -> list[str]:
    """Append an event to ``topic`` and deliver it, page after page, as the engine does
    (emit_event, then deliver_event from where the page before stopped); return the runs
    it resumed."""
    event, done = await store.emit_event(topic, value, now, retain, limit=limit)
    resumed: list[str] = []
    while True:
        resumed += done.resumed
        if done.after is None:
            return resumed
        done = await store.deliver_event(event, now, after=done.after, limit=limit)


async def status(store: Store, run_id: str) -> RunStatus | None:
    """The status of ``run_id``, or None if there is no such run."""
    rec = await store.get_run(run_id)
    return None if rec is None else rec.status


async def names(store: Store, run_id: str) -> list[str]:
    """The names of the checkpoints of ``run_id``, in order."""
    return [c.name for c in await store.get_checkpoints(run_id)]


# -- create / get -------------------------------------------------------------------------


async def test_create_run_is_idempotent_on_run_id(store: Store) -> None:
    """A second create with the same run id changes nothing and reports created=False."""
    first, created = await store.create_run(record("r1", workflow="a"))
    again, created_again = await store.create_run(record("r1", workflow="b", now=at(5)))
    assert created is True
    assert created_again is False
    assert first.workflow == again.workflow == "a"
    stored = await store.get_run("r1")
    assert stored is not None
    assert stored.workflow == "a"
    assert stored.created_at == T0
    assert len(await store.list_runs()) == 1


async def test_create_run_keeps_every_field(store: Store) -> None:
    """What create_run stores is what get_run returns."""
    policy = CancellationPolicy(max_run_duration=60, max_suspend_duration=10)
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await store.create_run(
        record("r1", queue="q2", parent_run_id="p1", policy=policy, ttl=5.0, trace=trace)
    )
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.run_id == "r1"
    assert rec.workflow == "wf"
    assert rec.status is RunStatus.PENDING
    assert rec.params == enc({"n": 1})
    assert rec.queue == "q2"
    assert rec.parent_run_id == "p1"
    assert rec.policy == policy
    assert rec.ttl == 5.0
    assert rec.timer_at == at(60)
    assert rec.attempts == 0
    assert rec.trace == trace


async def test_get_unknown_run_is_none(store: Store) -> None:
    """get_run of an id never created returns None, and it has no checkpoints."""
    assert await store.get_run("nope") is None
    assert await store.get_checkpoints("nope") == []


# -- claim and leases ---------------------------------------------------------------------


async def test_claim_takes_a_pending_run(store: Store) -> None:
    """A claim sets RUNNING, the owner's lease, a new token, and counts an attempt."""
    await store.create_run(record())
    claim = await store.claim("r1", "w1", at(1), LEASE)
    assert claim is not None
    assert claim.record.status is RunStatus.RUNNING
    assert claim.record.lease_owner == "w1"
    assert claim.record.lease_expires_at == at(1 + LEASE)
    assert claim.record.attempts == 1
    assert claim.checkpoints == []
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.RUNNING
    assert rec.token == claim.token
    assert rec.lease_owner == "w1"


async def test_claim_refused_while_a_lease_is_live(store: Store) -> None:
    """Nobody, not even the same owner, claims a run whose lease has not expired."""
    await started(store)
    assert await store.claim("r1", "w2", at(LEASE - 1), LEASE) is None
    assert await store.claim("r1", "w1", at(1), LEASE) is None
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.lease_owner == "w1"
    assert rec.attempts == 1


async def test_expired_lease_can_be_taken_over(store: Store) -> None:
    """After its lease expires a run is claimed again: a higher token, one more attempt."""
    first = await started(store)
    second = await store.claim("r1", "w2", at(LEASE + 1), LEASE)
    assert second is not None
    assert second.token > first.token
    assert second.record.attempts == 2
    assert second.record.lease_owner == "w2"


async def test_claim_of_unknown_suspended_or_ended_run_is_none(store: Store) -> None:
    """Only PENDING or RUNNING runs can be claimed."""
    assert await store.claim("nope", "w1", T0, LEASE) is None
    claim = await started(store, "sleeping")
    await store.commit("sleeping", claim.token, Suspend(resume_at=at(10)), T0)
    assert await store.claim("sleeping", "w1", at(100), LEASE) is None
    claim = await started(store, "done")
    await store.commit("done", claim.token, Complete(result=enc(1)), T0)
    assert await store.claim("done", "w1", at(100), LEASE) is None


async def test_claim_returns_checkpoints_in_order(store: Store) -> None:
    """A claim hands over every checkpoint, in the order it was written."""
    claim = await started(store)
    for i, name in enumerate(["b", "a", "c", "a#1", "c@sleep#0"]):
        await store.save_checkpoint("r1", claim.token, Checkpoint(name, enc(i)), T0)
    await store.commit("r1", claim.token, Release(), T0)
    again = await store.claim("r1", "w1", at(1), LEASE)
    assert again is not None
    assert [(c.name, c.value) for c in again.checkpoints] == [
        ("b", enc(0)),
        ("a", enc(1)),
        ("c", enc(2)),
        ("a#1", enc(3)),
        ("c@sleep#0", enc(4)),
    ]


async def test_renew_lease_extends_it_and_is_fenced(store: Store) -> None:
    """Renewal pushes the expiry out; a stale token cannot renew."""
    claim = await started(store)
    await store.renew_lease("r1", claim.token, at(20), LEASE)
    assert await store.claim("r1", "w2", at(LEASE + 1), LEASE) is None
    taken = await store.claim("r1", "w2", at(20 + LEASE + 1), LEASE)
    assert taken is not None
    with pytest.raises(LeaseLost):
        await store.renew_lease("r1", claim.token, at(60), LEASE)


# -- fencing ------------------------------------------------------------------------------


async def test_stale_token_cannot_save_a_checkpoint(store: Store) -> None:
    """save_checkpoint with a token that is no longer the run's raises and writes nothing."""
    first = await started(store)
    second = await store.claim("r1", "w2", at(LEASE + 1), LEASE)
    assert second is not None
    with pytest.raises(LeaseLost):
        await store.save_checkpoint("r1", first.token, Checkpoint("a", enc(1)), at(32))
    assert await store.get_checkpoints("r1") == []
    await store.save_checkpoint("r1", second.token, Checkpoint("a", enc(2)), at(32))
    assert [c.value for c in await store.get_checkpoints("r1")] == [enc(2)]


async def test_stale_token_cannot_commit(store: Store) -> None:
    """Commit with a stale token raises LeaseLost and leaves the run as it was."""
    first = await started(store)
    second = await store.claim("r1", "w2", at(LEASE + 1), LEASE)
    assert second is not None
    with pytest.raises(LeaseLost):
        await store.commit(
            "r1",
            first.token,
            Complete(result=enc(1), checkpoints=(Checkpoint("a", enc(1)),)),
            at(32),
        )
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.RUNNING
    assert rec.lease_owner == "w2"
    assert rec.result is None
    assert await store.get_checkpoints("r1") == []


async def test_token_is_spent_after_a_commit(store: Store) -> None:
    """Once an outcome is committed, the same token can write nothing more."""
    claim = await started(store)
    await store.commit("r1", claim.token, Suspend(resume_at=at(5)), T0)
    with pytest.raises(LeaseLost):
        await store.save_checkpoint("r1", claim.token, Checkpoint("x", enc(1)), T0)
    with pytest.raises(LeaseLost):
        await store.commit("r1", claim.token, Complete(result=enc(1)), T0)


async def test_write_to_unknown_run_is_lease_lost(store: Store) -> None:
    """Writing to a run that does not exist is refused as a lost lease."""
    with pytest.raises(LeaseLost):
        await store.save_checkpoint("nope", 1, Checkpoint("a", enc(1)), T0)
    with pytest.raises(LeaseLost):
        await store.commit("nope", 1, Complete(result=enc(1)), T0)


# -- checkpoints --------------------------------------------------------------------------


async def test_checkpoints_keep_write_order(store: Store) -> None:
    """get_checkpoints lists checkpoints in the order they were saved."""
    claim = await started(store)
    order = ["zeta", "alpha", "alpha#1", "mid@event#0", "mid"]
    for i, name in enumerate(order):
        await store.save_checkpoint("r1", claim.token, Checkpoint(name, enc(i)), T0)
    assert await names(store, "r1") == order


async def test_saving_a_checkpoint_again_replaces_it(store: Store) -> None:
    """A checkpoint saved twice under one name keeps one entry, with the newer value."""
    claim = await started(store)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), T0)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(2)), T0)
    assert [(c.name, c.value) for c in await store.get_checkpoints("r1")] == [("a", enc(2))]


# -- checkpoint times ---------------------------------------------------------------------


async def times(store: Store, run_id: str) -> list[tuple[str, datetime | None]]:
    """The name and time of each checkpoint of ``run_id``, in order."""
    return [(c.name, c.at) for c in await store.get_checkpoints(run_id)]


async def test_saved_checkpoints_carry_the_time_of_their_write(store: Store) -> None:
    """save_checkpoint records its ``now`` (not the caller's ``at``); every read returns it."""
    claim = await started(store)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), at(1))
    await store.save_checkpoint("r1", claim.token, Checkpoint("b", enc(2), at(99)), at(2.5))
    assert await times(store, "r1") == [("a", at(1)), ("b", at(2.5))]
    await store.commit("r1", claim.token, Release(), at(3))
    again = await store.claim("r1", "w1", at(3), LEASE)
    assert again is not None
    assert [(c.name, c.value, c.at) for c in again.checkpoints] == [
        ("a", enc(1), at(1)),
        ("b", enc(2), at(2.5)),
    ]


async def test_a_replaced_checkpoint_takes_the_time_of_the_new_write(store: Store) -> None:
    """A checkpoint saved again keeps its place and takes the later write's time."""
    claim = await started(store)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), at(1))
    await store.save_checkpoint("r1", claim.token, Checkpoint("b", enc(2)), at(2))
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(3)), at(3))
    assert await times(store, "r1") == [("a", at(3)), ("b", at(2))]


async def test_checkpoints_of_a_commit_carry_its_time(store: Store) -> None:
    """Checkpoints written with a Suspend or a Complete carry the commit's ``now``."""
    claim = await started(store)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), at(1))
    sleep = Checkpoint("b@sleep#0", enc("wake"))
    await store.commit("r1", claim.token, Suspend(checkpoints=(sleep,), resume_at=at(10)), at(2))
    assert (await store.fire_timer("r1", at(10), TIMEOUT)).action == "woken"
    again = await store.claim("r1", "w1", at(11), LEASE)
    assert again is not None
    last = Checkpoint("b", enc("B"))
    await store.commit("r1", again.token, Complete(result=enc("B"), checkpoints=(last,)), at(12))
    assert await times(store, "r1") == [("a", at(1)), ("b@sleep#0", at(2)), ("b", at(12))]


async def test_a_delivered_event_carries_the_delivery_time(store: Store) -> None:
    """The payload deliver_event writes to a wait's checkpoint carries the delivery's time."""
    await suspended_on(store, "r1", "t.paid", now=at(1))
    assert await emit(store, "t.paid", enc({"e": 1}), at(7)) == ["r1"]
    assert await times(store, "r1") == [("review@event#0", at(7))]


async def test_a_timed_out_wait_carries_the_firing_time(store: Store) -> None:
    """The timeout marker fire_timer writes to a wait's checkpoint carries its ``now``."""
    claim = await started(store)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), at(1))
    await store.commit(
        "r1",
        claim.token,
        Suspend(wait_topic="t.late", wait_key="w@event#0", resume_at=at(10)),
        at(2),
    )
    assert (await store.fire_timer("r1", at(10.5), TIMEOUT)).action == "woken"
    assert await times(store, "r1") == [("a", at(1)), ("w@event#0", at(10.5))]


async def test_rewind_keeps_the_times_of_the_checkpoints_it_keeps(store: Store) -> None:
    """After a rewind the remaining checkpoints keep their times; new ones get theirs."""
    claim = await started(store)
    for i, name in enumerate(["a", "b", "c"]):
        await store.save_checkpoint("r1", claim.token, Checkpoint(name, enc(i)), at(i))
    assert await store.rewind("r1", "b", at(5)) is not None
    again = await store.claim("r1", "w2", at(6), LEASE)
    assert again is not None
    await store.save_checkpoint("r1", again.token, Checkpoint("b", enc(9)), at(7))
    assert await times(store, "r1") == [("a", at(0)), ("b", at(7))]


# -- outcomes -----------------------------------------------------------------------------


async def test_complete_ends_the_run_with_its_result(store: Store) -> None:
    """Complete records the result and its checkpoints, ends the run, drops the lease."""
    claim = await started(store)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc("A")), T0)
    result = await store.commit(
        "r1",
        claim.token,
        Complete(result=enc("B"), checkpoints=(Checkpoint("b", enc("B")),)),
        at(2),
    )
    assert result.record.status is RunStatus.COMPLETED
    assert result.woken == ()
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.COMPLETED
    assert rec.result == enc("B")
    assert rec.finished_at == at(2)
    assert rec.lease_owner is None
    assert rec.lease_expires_at is None
    assert rec.timer_at is None
    assert await names(store, "r1") == ["a", "b"]


async def test_suspend_until_a_time(store: Store) -> None:
    """Suspend(resume_at) parks the run: not claimable, its timer at the wake time."""
    claim = await started(store)
    cp = Checkpoint("s@sleep#0", enc("2030"))
    await store.commit("r1", claim.token, Suspend(checkpoints=(cp,), resume_at=at(10)), at(1))
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.SUSPENDED
    assert rec.resume_at == at(10)
    assert rec.suspended_at == at(1)
    assert rec.timer_at == at(10)
    assert rec.lease_owner is None
    assert await names(store, "r1") == ["s@sleep#0"]
    assert await store.claim("r1", "w1", at(11), LEASE) is None
    assert await store.runnable(at(11), 10) == []


async def test_suspend_on_an_event(store: Store) -> None:
    """Suspend(wait_topic) makes the run a waiter of that topic, with no timer."""
    claim = await started(store)
    await store.commit(
        "r1", claim.token, Suspend(wait_topic="orders.paid", wait_key="pay@event#0"), at(1)
    )
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.SUSPENDED
    assert rec.wait_topic == "orders.paid"
    assert rec.wait_key == "pay@event#0"
    assert rec.timer_at is None
    waiting = await store.runs_waiting_on("orders.paid")
    assert [r.run_id for r in waiting] == ["r1"]
    assert await store.runs_waiting_on("orders.other") == []


async def test_retry_later_parks_the_run_with_its_error(store: Store) -> None:
    """RetryLater suspends until the retry time and records the error and failure count."""
    claim = await started(store)
    error = ErrorInfo(type="ValueError", message="boom", step="s", attempts=1)
    await store.commit(
        "r1", claim.token, RetryLater(step="s", failures=1, resume_at=at(4), error=error), at(1)
    )
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.SUSPENDED
    assert rec.resume_at == at(4)
    assert rec.timer_at == at(4)
    assert rec.error == error
    assert rec.attempt_step == "s"
    assert rec.step_failures == 1
    assert await store.claim("r1", "w1", at(5), LEASE) is None


async def test_fail_ends_the_run_with_its_error(store: Store) -> None:
    """Fail ends the run as FAILED with the given error."""
    claim = await started(store)
    error = ErrorInfo(type="KeyError", message="'x'", step="s", attempts=3)
    await store.commit("r1", claim.token, Fail(error=error), at(3))
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.FAILED
    assert rec.error == error
    assert rec.finished_at == at(3)
    assert rec.lease_owner is None


async def test_release_gives_the_run_back_at_once(store: Store) -> None:
    """Release leaves the run PENDING with no lease: claimable again immediately."""
    claim = await started(store)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), T0)
    await store.commit("r1", claim.token, Release(), at(1))
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert rec.lease_owner is None
    assert await store.runnable(at(1), 10) == [("r1", "workflow")]
    again = await store.claim("r1", "w2", at(1), LEASE)
    assert again is not None
    assert again.token > claim.token
    assert again.record.attempts == 2
    assert [c.name for c in again.checkpoints] == ["a"]


# -- events -------------------------------------------------------------------------------


async def test_deliver_event_resumes_a_waiter_with_the_payload(store: Store) -> None:
    """The payload is written to the wait's checkpoint and the run becomes runnable."""
    await suspended_on(store, "r1", "orders.paid")
    resumed = await emit(store, "orders.paid", enc({"e": 42}), at(1))
    assert resumed == ["r1"]
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert rec.wait_topic is None
    assert rec.resume_key == "review@event#0"
    assert [(c.name, c.value) for c in await store.get_checkpoints("r1")] == [
        ("review@event#0", enc({"e": 42}))
    ]
    assert await store.runs_waiting_on("orders.paid") == []
    claim = await store.claim("r1", "w1", at(1), LEASE)
    assert claim is not None
    assert claim.record.resume_key == "review@event#0"


async def test_deliver_event_resumes_each_waiter_once(store: Store) -> None:
    """Every waiter of the topic is resumed by one delivery; a second finds nobody."""
    for run_id in ("a", "b", "c"):
        await suspended_on(store, run_id, "t.go")
    await suspended_on(store, "other", "t.stop")
    assert sorted(await emit(store, "t.go", enc({"e": 1}), at(1))) == ["a", "b", "c"]
    assert await emit(store, "t.go", enc({"e": 2}), at(2)) == []
    for run_id in ("a", "b", "c"):
        assert [c.value for c in await store.get_checkpoints(run_id)] == [enc({"e": 1})]
    assert await status(store, "other") is RunStatus.SUSPENDED


async def test_deliver_event_with_no_waiter_resumes_nothing(store: Store) -> None:
    """An event nobody waits for changes nothing."""
    await store.create_run(record())
    assert await emit(store, "t.none", enc({"e": 1}), T0) == []
    assert await status(store, "r1") is RunStatus.PENDING


async def rewait(
    store: Store, run_id: str, topics: tuple[str, ...], now: datetime, n: int = 1, **kw: Any
) -> Any:
    """Claim ``run_id`` (runnable) and suspend it on ``topics`` again, its wait's checkpoint
    named ``w@event#<n>``; return the commit's result."""
    claim = await store.claim(run_id, "w1", now, LEASE)
    assert claim is not None
    suspend = Suspend(
        wait_topic=topics[0],
        wait_topics=topics if len(topics) > 1 else None,
        wait_key=f"w@event#{n}",
        **kw,
    )
    return await store.commit(run_id, claim.token, suspend, now)


async def values(store: Store, run_id: str) -> list[bytes]:
    """The values of the run's checkpoints, in order."""
    return [c.value for c in await store.get_checkpoints(run_id)]


async def test_racing_deliveries_resume_a_waiter_exactly_once(store: Store) -> None:
    """Of two deliveries racing for one waiter, exactly one resumes it, with the older
    event; the other event is there for the run's next wait, taken at once."""
    await suspended_on(store, "r1", "t.race")
    first = await store.append_event("t.race", enc({"e": 1}), at(1), 60)
    second = await store.append_event("t.race", enc({"e": 2}), at(1), 60)
    results: dict[int, list[str]] = {}

    async def deliver(n: int, event: Any) -> None:
        results[n] = (await store.deliver_event(event, at(1))).resumed

    async with anyio.create_task_group() as tg:
        tg.start_soon(deliver, 2, second)
        tg.start_soon(deliver, 1, first)
    assert sum(len(ids) for ids in results.values()) == 1
    assert await values(store, "r1") == [enc({"e": 1})]
    again = await rewait(store, "r1", ("t.race",), at(2))
    assert again.record.status is RunStatus.PENDING
    assert await values(store, "r1") == [enc({"e": 1}), enc({"e": 2})]
    await rewait(store, "r1", ("t.race",), at(3), n=2)
    for event in (first, second):
        assert (await store.deliver_event(event, at(4))).resumed == []
    assert await status(store, "r1") is RunStatus.SUSPENDED


async def test_a_delivery_pages_through_the_waiters(store: Store) -> None:
    """Deliveries page through the waiters (``limit`` a page, ``after`` where the next
    goes on) and resume each exactly once."""
    for i in range(5):
        await suspended_on(store, f"r{i}", "t.many")
    resumed = await emit(store, "t.many", enc({"e": 1}), at(1), limit=2)
    assert sorted(resumed) == [f"r{i}" for i in range(5)]
    assert await store.runs_waiting_on("t.many") == []


async def test_a_delivered_event_is_never_delivered_again_to_a_run_that_waits_again(
    store: Store,
) -> None:
    """A run that took an event and waits again on its topic is not given that event by
    a later page or a repeated delivery of it (the doubled delivery of batched emits)."""
    await suspended_on(store, "r1", "t.again")
    event = await store.append_event("t.again", enc({"e": "first"}), at(1), 60)
    assert (await store.deliver_event(event, at(1))).resumed == ["r1"]
    assert (await rewait(store, "r1", ("t.again",), at(2))).record.status is RunStatus.SUSPENDED
    assert (await store.deliver_event(event, at(3))).resumed == []
    assert (await store.deliver_event(event, at(3), after=0, limit=1)).resumed == []
    assert await status(store, "r1") is RunStatus.SUSPENDED
    assert await values(store, "r1") == [enc({"e": "first"})]
    assert await emit(store, "t.again", enc({"e": "second"}), at(4)) == ["r1"]
    assert await values(store, "r1") == [enc({"e": "first"}), enc({"e": "second"})]


async def test_a_kept_event_is_taken_by_a_run_that_waits_later(store: Store) -> None:
    """An event emitted while the run is busy is taken at once by its next wait on the
    topic: the suspend commits it as the wait's result and leaves the run runnable."""
    claim = await started(store)
    assert await emit(store, "t.early", enc({"e": 7}), at(1)) == []
    result = await store.commit(
        "r1", claim.token, Suspend(wait_topic="t.early", wait_key="w@event#0"), at(2)
    )
    assert result.record.status is RunStatus.PENDING
    assert result.record.resume_key == "w@event#0"
    assert result.record.wait_topic is None
    assert await values(store, "r1") == [enc({"e": 7})]
    assert await store.runs_waiting_on("t.early") == []
    assert await store.runnable(at(2), 10) == [("r1", "workflow")]


async def test_kept_events_are_taken_in_order_each_once(store: Store) -> None:
    """Three events emitted before any wait are taken by three waits, in order, once."""
    claim = await started(store)
    for n in (1, 2, 3):
        assert await emit(store, "t.seq", enc({"e": n}), at(n)) == []
    suspend = Suspend(wait_topic="t.seq", wait_key="w@event#0")
    assert (await store.commit("r1", claim.token, suspend, at(4))).record.status is (
        RunStatus.PENDING
    )
    for n in (1, 2):
        assert (await rewait(store, "r1", ("t.seq",), at(5), n)).record.status is (
            RunStatus.PENDING
        )
    assert (await rewait(store, "r1", ("t.seq",), at(6), 3)).record.status is (RunStatus.SUSPENDED)
    assert await values(store, "r1") == [enc({"e": n}) for n in (1, 2, 3)]


async def test_an_event_emitted_before_a_run_was_created_is_not_taken(store: Store) -> None:
    """A run takes the events emitted after its creation only."""
    assert await emit(store, "t.old", enc({"e": "old"}), T0) == []
    claim = await started(store, now=at(1))
    result = await store.commit(
        "r1", claim.token, Suspend(wait_topic="t.old", wait_key="w@event#0"), at(2)
    )
    assert result.record.status is RunStatus.SUSPENDED
    assert await emit(store, "t.old", enc({"e": "new"}), at(3)) == ["r1"]
    assert await values(store, "r1") == [enc({"e": "new"})]


async def test_an_event_not_kept_reaches_only_the_runs_waiting(store: Store) -> None:
    """An event appended with no retention resumes the runs waiting then, and is not
    there for a later wait."""
    await suspended_on(store, "waiting", "t.live")
    claim = await started(store, "busy")
    assert await emit(store, "t.live", enc({"e": 1}), at(1), retain=None) == ["waiting"]
    result = await store.commit(
        "busy", claim.token, Suspend(wait_topic="t.live", wait_key="w@event#0"), at(2)
    )
    assert result.record.status is RunStatus.SUSPENDED
    assert await values(store, "waiting") == [enc({"e": 1})]


async def test_a_wait_on_several_topics_takes_the_first_event(store: Store) -> None:
    """A wait on several topics is listed under each and taken by an event on any; its
    cursor moves on that topic only, and what came on the others stays."""
    claim = await started(store)
    both = ("t.a", "t.b")
    suspend = Suspend(wait_topic="t.a", wait_topics=both, wait_key="w@any#0")
    assert (await store.commit("r1", claim.token, suspend, at(1))).record.status is (
        RunStatus.SUSPENDED
    )
    for topic in both:
        [rec] = await store.runs_waiting_on(topic)
        assert rec.wait_topics == both
    assert await emit(store, "t.b", enc({"e": "b"}), at(2)) == ["r1"]
    assert await store.runs_waiting_on("t.a") == []
    assert await emit(store, "t.a", enc({"e": "a"}), at(3)) == []
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.wait_topics is None
    result = await rewait(store, "r1", both, at(4))
    assert result.record.status is RunStatus.PENDING
    assert await values(store, "r1") == [enc({"e": "b"}), enc({"e": "a"})]


async def test_wait_data_is_kept_while_the_run_waits(store: Store) -> None:
    """What a wait says about itself is stored with the wait and cleared when it ends."""
    claim = await started(store)
    suspend = Suspend(wait_topic="t.d", wait_key="w@event#0", wait_data=enc({"doc": 42}))
    await store.commit("r1", claim.token, suspend, at(1))
    [rec] = await store.runs_waiting_on("t.d")
    assert rec.wait_data == enc({"doc": 42})
    await emit(store, "t.d", enc({"e": 1}), at(2))
    after = await store.get_run("r1")
    assert after is not None
    assert after.wait_data is None


# -- messages -------------------------------------------------------------------------------


async def test_a_message_to_a_waiting_run_resumes_it(store: Store) -> None:
    """A message to a run waiting on its topic is its wait's result at once."""
    await suspended_on(store, "r1", "t.m")
    sent = await store.send_message("r1", "t.m", enc({"e": "hi"}), at(1))
    assert (sent.outcome, sent.resumed) == ("accepted", True)
    assert sent.record is not None
    assert sent.record.status is RunStatus.PENDING
    assert await values(store, "r1") == [enc({"e": "hi"})]


async def test_messages_wait_in_the_mailbox_oldest_first(store: Store) -> None:
    """Messages to a busy run are kept and taken by its waits oldest first, once each;
    a message on another topic stays."""
    claim = await started(store)
    for n in (1, 2):
        sent = await store.send_message("r1", "t.m", enc({"e": n}), at(n))
        assert (sent.outcome, sent.resumed) == ("accepted", False)
    assert (await store.send_message("r1", "t.other", enc({"e": "x"}), at(3))).resumed is False
    suspend = Suspend(wait_topic="t.m", wait_key="w@event#0")
    assert (await store.commit("r1", claim.token, suspend, at(4))).record.status is (
        RunStatus.PENDING
    )
    assert (await rewait(store, "r1", ("t.m",), at(5))).record.status is RunStatus.PENDING
    assert (await rewait(store, "r1", ("t.m",), at(6), 2)).record.status is RunStatus.SUSPENDED
    assert await values(store, "r1") == [enc({"e": 1}), enc({"e": 2})]
    assert (await store.send_message("r1", "t.m", enc({"e": 3}), at(7))).resumed is True
    result = await rewait(store, "r1", ("t.m", "t.other"), at(8), 3)
    assert result.record.status is RunStatus.PENDING
    assert await values(store, "r1") == [enc({"e": n}) for n in (1, 2, 3)] + [enc({"e": "x"})]


async def test_a_message_is_taken_before_kept_events(store: Store) -> None:
    """A wait takes the messages of its mailbox before the topic's kept events."""
    claim = await started(store)
    await emit(store, "t.m", enc({"e": "event"}), at(1))
    await store.send_message("r1", "t.m", enc({"e": "message"}), at(2))
    await store.commit("r1", claim.token, Suspend(wait_topic="t.m", wait_key="w@event#0"), at(3))
    await rewait(store, "r1", ("t.m",), at(4))
    assert await values(store, "r1") == [enc({"e": "message"}), enc({"e": "event"})]


async def test_a_keyed_message_is_accepted_once(store: Store) -> None:
    """A second send with the same key to the same run changes nothing; the key is
    remembered after the message was taken, and means nothing for another run."""
    await suspended_on(store, "r1", "t.k")
    await store.create_run(record("r2"))
    first = await store.send_message("r1", "t.k", enc({"e": 1}), at(1), key="k1")
    assert (first.outcome, first.resumed) == ("accepted", True)
    again = await store.send_message("r1", "t.k", enc({"e": 2}), at(2), key="k1")
    assert again.outcome == "duplicate"
    assert await values(store, "r1") == [enc({"e": 1})]
    assert (await store.send_message("r2", "t.k", enc({"e": 3}), at(3), key="k1")).outcome == (
        "accepted"
    )
    assert (await store.send_message("r2", "t.k", enc({"e": 4}), at(3), key="k1")).outcome == (
        "duplicate"
    )


async def test_a_message_to_an_unknown_or_ended_run_is_refused(store: Store) -> None:
    """Sending to no such run or to an ended one changes nothing and says which."""
    assert (await store.send_message("nope", "t.x", enc(1), at(1))).outcome == "not_found"
    await store.create_run(record())
    assert (await store.send_message("r1", "t.x", enc(1), at(1), key="k")).outcome == "accepted"
    await store.cancel("r1", "done", at(1))
    sent = await store.send_message("r1", "t.x", enc(1), at(2))
    assert sent.outcome == "ended"
    assert sent.record is not None
    assert sent.record.status is RunStatus.CANCELLED
    # A retried send (same key) after the end is no error: it was sent.
    assert (await store.send_message("r1", "t.x", enc(1), at(3), key="k")).outcome == ("duplicate")


async def test_racing_sends_and_deliveries_resume_a_waiter_once(store: Store) -> None:
    """A message and an event racing for one waiter: one of them resumes it, the other
    is there for its next wait."""
    await suspended_on(store, "r1", "t.both")
    event = await store.append_event("t.both", enc({"e": "event"}), at(1), 60)
    outcomes: list[bool] = []

    async def send() -> None:
        outcomes.append((await store.send_message("r1", "t.both", enc({"e": "m"}), at(1))).resumed)

    async def deliver() -> None:
        outcomes.append(bool((await store.deliver_event(event, at(1))).resumed))

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        tg.start_soon(deliver)
    assert sorted(outcomes) == [False, True]
    assert (await rewait(store, "r1", ("t.both",), at(2))).record.status is RunStatus.PENDING
    assert sorted(await values(store, "r1")) == sorted([enc({"e": "event"}), enc({"e": "m"})])


# -- pages ------------------------------------------------------------------------------------


async def test_runs_page_newest_first(store: Store) -> None:
    """page_runs pages through runs newest first, filters applied, to the last page."""
    for i in range(7):
        await store.create_run(record(f"r{i}", workflow="a" if i % 2 else "b"))
    seen: list[str] = []
    page = await store.page_runs(limit=3)
    seen += [r.run_id for r in page.records]
    while page.next is not None:
        page = await store.page_runs(limit=3, after=page.next)
        seen += [r.run_id for r in page.records]
    assert seen == [f"r{i}" for i in range(6, -1, -1)]
    page = await store.page_runs(workflow="a", limit=2)
    assert [r.run_id for r in page.records] == ["r5", "r3"]
    assert page.next is not None
    last = await store.page_runs(workflow="a", limit=2, after=page.next)
    assert ([r.run_id for r in last.records], last.next) == (["r1"], None)


async def test_waiting_runs_page_in_creation_order(store: Store) -> None:
    """page_waiting pages through the runs waiting on a topic in creation order."""
    for i in range(5):
        await suspended_on(store, f"r{i}", "t.page")
    page = await store.page_waiting("t.page", limit=2)
    seen = [r.run_id for r in page.records]
    while page.next is not None:
        page = await store.page_waiting("t.page", limit=2, after=page.next)
        seen += [r.run_id for r in page.records]
    assert seen == [f"r{i}" for i in range(5)]
    assert [r.run_id for r in await store.runs_waiting_on("t.page", limit=3)] == ["r0", "r1", "r2"]


# -- timers -------------------------------------------------------------------------------


async def sleeping(store: Store, run_id: str, wake: float, **fields: Any) -> None:
    """Start ``run_id`` and suspend it until ``wake`` seconds after T0."""
    claim = await started(store, run_id, **fields)
    await store.commit(run_id, claim.token, Suspend(resume_at=at(wake)), T0)


async def test_due_timers_earliest_first_until_and_limit(store: Store) -> None:
    """due_timers lists timers at or before ``until``, earliest first, at most ``limit``."""
    for run_id, wake in [("c", 30), ("a", 10), ("d", 40), ("b", 20)]:
        await sleeping(store, run_id, wake)
    assert await store.due_timers(at(5), 10) == []
    assert await store.due_timers(at(30), 10) == [(at(10), "a"), (at(20), "b"), (at(30), "c")]
    assert await store.due_timers(at(100), 2) == [(at(10), "a"), (at(20), "b")]


async def test_due_timers_follow_the_current_timer_of_each_run(store: Store) -> None:
    """A run whose timer moved is listed once, at its current time, whatever it was before."""
    await store.create_run(record("p", policy=CancellationPolicy(max_run_duration=50)))
    for i in range(4):
        await sleeping(store, f"s{i}", 40 + i)
    # "p" sleeps (timer 5), is woken (timer back to its deadline, 50), then sleeps again
    # (timer 45): its old timers must neither hide the others nor be listed.
    claim = await store.claim("p", "w1", T0, LEASE)
    assert claim is not None
    await store.commit("p", claim.token, Suspend(resume_at=at(5)), T0)
    assert (await store.fire_timer("p", at(5), TIMEOUT)).action == "woken"
    claim = await store.claim("p", "w1", at(5), LEASE)
    assert claim is not None
    await store.commit("p", claim.token, Suspend(resume_at=at(45)), at(5))
    due = await store.due_timers(at(100), 10)
    assert due == [(at(40), "s0"), (at(41), "s1"), (at(42), "s2"), (at(43), "s3"), (at(45), "p")]
    assert await store.due_timers(at(100), 2) == [(at(40), "s0"), (at(41), "s1")]


async def test_due_timers_skip_timers_that_no_longer_apply(store: Store) -> None:
    """Timers that were disarmed (runs woken since) do not crowd out the ones still due."""
    await sleeping(store, "x", 1)
    for i, wake in enumerate((2, 3, 4)):
        await sleeping(store, f"y{i}", wake)
        assert (await store.fire_timer(f"y{i}", at(4), TIMEOUT)).action == "woken"
    await sleeping(store, "w", 5)
    assert await store.due_timers(at(100), 2) == [(at(1), "x"), (at(5), "w")]
    assert await store.due_timers(at(100), 1) == [(at(1), "x")]


async def test_due_timers_list_each_run_once(store: Store) -> None:
    """A run whose timer came back to an earlier value is still listed only once."""
    await store.create_run(record("p", policy=CancellationPolicy(max_run_duration=50)))
    for wake in (5, 6):
        claim = await store.claim("p", "w1", at(wake - 5), LEASE)
        assert claim is not None
        await store.commit("p", claim.token, Suspend(resume_at=at(wake)), at(wake - 5))
        assert (await store.fire_timer("p", at(wake), TIMEOUT)).action == "woken"
    assert await store.due_timers(at(100), 10) == [(at(50), "p")]


async def test_fire_timer_wakes_a_sleeping_run(store: Store) -> None:
    """A sleep's timer does nothing early, and makes the run runnable once due."""
    await sleeping(store, "r1", 10)
    early = await store.fire_timer("r1", at(9), TIMEOUT)
    assert early.action == "none"
    assert await status(store, "r1") is RunStatus.SUSPENDED
    fired = await store.fire_timer("r1", at(10), TIMEOUT)
    assert fired.action == "woken"
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert rec.resume_at is None
    assert rec.timer_at is None
    assert await store.get_checkpoints("r1") == []
    assert await store.claim("r1", "w1", at(10), LEASE) is not None


async def test_fire_timer_times_out_an_event_wait(store: Store) -> None:
    """An event wait past its timeout gets the timeout value and stops waiting."""
    claim = await started(store)
    await store.commit(
        "r1",
        claim.token,
        Suspend(wait_topic="t.late", wait_key="w@event#0", resume_at=at(10)),
        T0,
    )
    assert (await store.fire_timer("r1", at(10), TIMEOUT)).action == "woken"
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert rec.resume_key == "w@event#0"
    assert [(c.name, c.value) for c in await store.get_checkpoints("r1")] == [
        ("w@event#0", TIMEOUT)
    ]
    assert await store.runs_waiting_on("t.late") == []
    assert await emit(store, "t.late", enc({"e": 1}), at(11)) == []
    assert [c.value for c in await store.get_checkpoints("r1")] == [TIMEOUT]


async def test_event_before_timeout_disarms_the_timer(store: Store) -> None:
    """An event that arrives in time wins: the timeout later changes nothing."""
    claim = await started(store)
    await store.commit(
        "r1",
        claim.token,
        Suspend(wait_topic="t.in", wait_key="w@event#0", resume_at=at(10)),
        T0,
    )
    assert await emit(store, "t.in", enc({"e": 1}), at(5)) == ["r1"]
    assert (await store.fire_timer("r1", at(10), TIMEOUT)).action == "none"
    assert [c.value for c in await store.get_checkpoints("r1")] == [enc({"e": 1})]
    assert await store.due_timers(at(100), 10) == []


async def test_fire_timer_cancels_past_max_run_duration(store: Store) -> None:
    """A run older than max_run_duration is cancelled and its owner fenced out."""
    claim = await started(store, policy=CancellationPolicy(max_run_duration=20))
    assert (await store.fire_timer("r1", at(19), TIMEOUT)).action == "none"
    await store.renew_lease("r1", claim.token, at(19), LEASE)
    fired = await store.fire_timer("r1", at(20), TIMEOUT)
    assert fired.action == "cancelled"
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.CANCELLED
    assert rec.cancel_reason == "max_run_duration"
    assert rec.finished_at == at(20)
    with pytest.raises(LeaseLost):
        await store.commit("r1", claim.token, Complete(result=enc(1)), at(21))


async def test_fire_timer_cancels_past_max_suspend_duration(store: Store) -> None:
    """A run suspended longer than max_suspend_duration is cancelled."""
    policy = CancellationPolicy(max_suspend_duration=10)
    await suspended_on(store, "r1", "t.never", now=at(0), policy=policy)
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.timer_at == at(10)
    assert (await store.fire_timer("r1", at(9), TIMEOUT)).action == "none"
    fired = await store.fire_timer("r1", at(10), TIMEOUT)
    assert fired.action == "cancelled"
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.CANCELLED
    assert rec.cancel_reason == "max_suspend_duration"
    assert await store.runs_waiting_on("t.never") == []


async def test_wake_before_the_suspend_deadline_wins(store: Store) -> None:
    """A sleep that ends before max_suspend_duration wakes the run, it is not cancelled."""
    await sleeping(store, "r1", 5, policy=CancellationPolicy(max_suspend_duration=10))
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.timer_at == at(5)
    assert (await store.fire_timer("r1", at(7), TIMEOUT)).action == "woken"
    assert await status(store, "r1") is RunStatus.PENDING


async def test_sleep_past_the_suspend_deadline_is_cancelled(store: Store) -> None:
    """A sleep longer than max_suspend_duration is cancelled at the deadline."""
    await sleeping(store, "r1", 100, policy=CancellationPolicy(max_suspend_duration=10))
    assert (await store.fire_timer("r1", at(10), TIMEOUT)).action == "cancelled"
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.cancel_reason == "max_suspend_duration"


async def test_fire_timer_deletes_an_ended_run_past_its_ttl(store: Store) -> None:
    """Retention: a run that ended ``ttl`` seconds ago is deleted with its checkpoints."""
    claim = await started(store, ttl=60.0)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), T0)
    await store.commit("r1", claim.token, Complete(result=enc(1)), at(10))
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.timer_at == at(70)
    assert await store.due_timers(at(100), 10) == [(at(70), "r1")]
    assert (await store.fire_timer("r1", at(69), TIMEOUT)).action == "none"
    assert await store.get_run("r1") is not None
    assert (await store.fire_timer("r1", at(70), TIMEOUT)).action == "deleted"
    assert await store.get_run("r1") is None
    assert await store.get_checkpoints("r1") == []
    assert await store.list_runs() == []
    assert await store.due_timers(at(100), 10) == []


async def test_ended_run_without_ttl_has_no_timer(store: Store) -> None:
    """Without a ttl an ended run is kept: no timer is left for it."""
    claim = await started(store, policy=CancellationPolicy(max_run_duration=5))
    await store.commit("r1", claim.token, Complete(result=enc(1)), at(1))
    assert await store.due_timers(at(1000), 10) == []
    assert (await store.fire_timer("r1", at(1000), TIMEOUT)).action == "none"
    assert await status(store, "r1") is RunStatus.COMPLETED


async def test_fire_timer_of_unknown_run_does_nothing(store: Store) -> None:
    """Firing the timer of a run that does not exist is a no-op."""
    fired = await store.fire_timer("nope", at(10), TIMEOUT)
    assert fired.action == "none"
    assert fired.woken == ()


# -- cancel -------------------------------------------------------------------------------


async def test_cancel_ends_a_live_run_and_fences_its_owner(store: Store) -> None:
    """Cancel ends a running run with its reason; the owner's writes are then refused."""
    claim = await started(store)
    result = await store.cancel("r1", "operator", at(3))
    assert result is not None
    assert result.record.status is RunStatus.CANCELLED
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.CANCELLED
    assert rec.cancel_reason == "operator"
    assert rec.finished_at == at(3)
    assert rec.lease_owner is None
    with pytest.raises(LeaseLost):
        await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), at(4))
    with pytest.raises(LeaseLost):
        await store.commit("r1", claim.token, Complete(result=enc(1)), at(4))
    assert await status(store, "r1") is RunStatus.CANCELLED


async def test_cancel_a_waiter_stops_its_wait(store: Store) -> None:
    """A cancelled waiter is no longer waiting and an event no longer resumes it."""
    await suspended_on(store, "r1", "t.x")
    assert await store.cancel("r1", "operator", at(1)) is not None
    assert await store.runs_waiting_on("t.x") == []
    assert await emit(store, "t.x", enc({"e": 1}), at(2)) == []
    assert await status(store, "r1") is RunStatus.CANCELLED


async def test_cancel_of_unknown_or_ended_run_is_none(store: Store) -> None:
    """Cancel returns None for a run that does not exist or has already ended."""
    assert await store.cancel("nope", "x", T0) is None
    claim = await started(store)
    await store.commit("r1", claim.token, Complete(result=enc(1)), T0)
    assert await store.cancel("r1", "x", at(1)) is None
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.COMPLETED
    assert rec.cancel_reason is None


# -- rewind -------------------------------------------------------------------------------


async def test_rewind_deletes_the_step_and_everything_after(store: Store) -> None:
    """Rewind deletes every checkpoint of the step and all later ones; the run is runnable."""
    claim = await started(store)
    order = ["a", "b@sleep#0", "b", "c", "b#1", "d@event#0", "d"]
    for name in order:
        await store.save_checkpoint("r1", claim.token, Checkpoint(name, enc(name)), T0)
    await store.commit("r1", claim.token, Suspend(resume_at=at(100)), T0)
    rec = await store.rewind("r1", "b", at(1))
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert await names(store, "r1") == ["a"]
    stored = await store.get_run("r1")
    assert stored is not None
    assert stored.status is RunStatus.PENDING
    assert stored.resume_at is None
    assert stored.timer_at is None
    again = await store.claim("r1", "w2", at(1), LEASE)
    assert again is not None
    assert [c.name for c in again.checkpoints] == ["a"]


async def test_rewind_fences_the_current_owner(store: Store) -> None:
    """A rewind while a worker holds the run makes that worker's writes stale."""
    claim = await started(store)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), T0)
    assert await store.rewind("r1", "a", at(1)) is not None
    with pytest.raises(LeaseLost):
        await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(2)), at(1))
    with pytest.raises(LeaseLost):
        await store.commit("r1", claim.token, Complete(result=enc(1)), at(1))
    assert await store.get_checkpoints("r1") == []
    assert await store.claim("r1", "w2", at(1), LEASE) is not None


async def test_rewind_reopens_an_ended_run(store: Store) -> None:
    """A completed run rewound is PENDING again, with no result and no finish time."""
    claim = await started(store)
    await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), T0)
    await store.commit(
        "r1", claim.token, Complete(result=enc(2), checkpoints=(Checkpoint("b", enc(2)),)), T0
    )
    assert await store.rewind("r1", "b", at(1)) is not None
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert rec.result is None
    assert rec.finished_at is None
    assert await names(store, "r1") == ["a"]


async def test_rewind_stops_a_wait(store: Store) -> None:
    """A rewound waiter no longer waits on its topic."""
    await suspended_on(store, "r1", "t.w")
    assert await store.rewind("r1", "review", at(1)) is not None
    assert await store.runs_waiting_on("t.w") == []
    assert await emit(store, "t.w", enc({"e": 1}), at(2)) == []


async def test_rewind_of_unknown_run_is_none(store: Store) -> None:
    """Rewinding a run that does not exist returns None."""
    assert await store.rewind("nope", "a", T0) is None


# -- listings -----------------------------------------------------------------------------


async def test_list_runs_newest_first_filtered_and_limited(store: Store) -> None:
    """list_runs filters by workflow, status and parent, newest first, at most ``limit``."""
    await store.create_run(record("r1", workflow="a", now=at(1)))
    await store.create_run(record("r2", workflow="b", now=at(2)))
    await store.create_run(record("r3", workflow="a", now=at(3), parent_run_id="r1"))
    await store.create_run(record("r4", workflow="a", now=at(4)))
    claim = await store.claim("r4", "w1", at(4), LEASE)
    assert claim is not None
    await store.commit("r4", claim.token, Complete(result=enc(1)), at(5))

    def ids(runs: list[RunRecord]) -> list[str]:
        return [r.run_id for r in runs]

    assert ids(await store.list_runs()) == ["r4", "r3", "r2", "r1"]
    assert ids(await store.list_runs(workflow="a")) == ["r4", "r3", "r1"]
    assert ids(await store.list_runs(status=RunStatus.PENDING)) == ["r3", "r2", "r1"]
    assert ids(await store.list_runs(workflow="a", status=RunStatus.COMPLETED)) == ["r4"]
    assert ids(await store.list_runs(parent_run_id="r1")) == ["r3"]
    assert ids(await store.list_runs(limit=2)) == ["r4", "r3"]
    assert ids(await store.list_runs(workflow="a", limit=1)) == ["r4"]
    assert await store.list_runs(workflow="zzz") == []


async def test_runs_waiting_on_lists_only_that_topic(store: Store) -> None:
    """runs_waiting_on lists the runs suspended on exactly that topic."""
    await suspended_on(store, "a", "t.one")
    await suspended_on(store, "b", "t.one")
    await suspended_on(store, "c", "t.two")
    await sleeping(store, "d", 10)
    assert sorted(r.run_id for r in await store.runs_waiting_on("t.one")) == ["a", "b"]
    assert [r.run_id for r in await store.runs_waiting_on("t.two")] == ["c"]
    assert all(r.wait_topic == "t.one" for r in await store.runs_waiting_on("t.one"))
    assert len(await store.runs_waiting_on("t.one", limit=1)) == 1


async def test_runnable_lists_claimable_runs_only(store: Store) -> None:
    """Runnable lists pending runs and runs with an expired lease, with their queue."""
    await store.create_run(record("pending", queue="q1"))
    await started(store, "leased")
    await started(store, "expired", now=at(-100))
    await sleeping(store, "sleeping", 10)
    claim = await started(store, "done")
    await store.commit("done", claim.token, Complete(result=enc(1)), T0)
    assert sorted(await store.runnable(at(1), 100)) == [
        ("expired", "workflow"),
        ("pending", "q1"),
    ]
    assert len(await store.runnable(at(1), 1)) == 1


# -- children -----------------------------------------------------------------------------


async def test_child_end_wakes_the_parent_waiting_on_it(store: Store) -> None:
    """A child's terminal commit makes a parent suspended on it runnable."""
    parent = await started(store, "parent")
    await store.create_run(record("child", parent_run_id="parent"))
    await store.commit("parent", parent.token, Suspend(wait_child="child", wait_key="s@join#0"), T0)
    assert await status(store, "parent") is RunStatus.SUSPENDED
    child = await store.claim("child", "w2", at(1), LEASE)
    assert child is not None
    result = await store.commit("child", child.token, Complete(result=enc("ok")), at(2))
    assert result.woken == ("parent",)
    rec = await store.get_run("parent")
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert rec.wait_child is None
    assert rec.resume_key == "s@join#0"
    assert await store.claim("parent", "w1", at(2), LEASE) is not None


@pytest.mark.parametrize("ending", ["fail", "cancel", "policy"])
async def test_child_failure_or_cancel_wakes_the_parent(store: Store, ending: str) -> None:
    """A child that fails, is cancelled or is cancelled by its policy wakes its parent."""
    parent = await started(store, "parent")
    policy = CancellationPolicy(max_run_duration=10)
    await store.create_run(record("child", parent_run_id="parent", policy=policy))
    await store.commit("parent", parent.token, Suspend(wait_child="child", wait_key="s@join#0"), T0)
    if ending == "fail":
        child = await store.claim("child", "w2", at(1), LEASE)
        assert child is not None
        error = ErrorInfo(type="E", message="m")
        woken = (await store.commit("child", child.token, Fail(error=error), at(2))).woken
    elif ending == "cancel":
        cancelled = await store.cancel("child", "operator", at(2))
        assert cancelled is not None
        woken = cancelled.woken
    else:
        fired = await store.fire_timer("child", at(10), TIMEOUT)
        assert fired.action == "cancelled"
        woken = fired.woken
    assert woken == ("parent",)
    assert await status(store, "parent") is RunStatus.PENDING


async def test_suspend_on_an_ended_child_stays_runnable(store: Store) -> None:
    """Suspending on a child that has already ended leaves the parent runnable."""
    await store.create_run(record("child"))
    child = await store.claim("child", "w2", T0, LEASE)
    assert child is not None
    await store.commit("child", child.token, Complete(result=enc(1)), T0)
    parent = await started(store, "parent")
    await store.commit(
        "parent", parent.token, Suspend(wait_child="child", wait_key="s@join#0"), at(1)
    )
    rec = await store.get_run("parent")
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert rec.lease_owner is None
    assert await store.runnable(at(1), 10) == [("parent", "workflow")]


async def test_child_end_does_not_wake_unrelated_runs(store: Store) -> None:
    """Only parents suspended on that very child are woken."""
    parent = await started(store, "parent")
    await store.create_run(record("child"))
    await store.create_run(record("other"))
    await store.commit("parent", parent.token, Suspend(wait_child="other", wait_key="s@join#0"), T0)
    child = await store.claim("child", "w2", T0, LEASE)
    assert child is not None
    result = await store.commit("child", child.token, Complete(result=enc(1)), at(1))
    assert result.woken == ()
    assert await status(store, "parent") is RunStatus.SUSPENDED


# -- the workflows served -------------------------------------------------------------------


async def test_registered_workflows_are_recorded_and_replaced_by_name(store: Store) -> None:
    """register_workflows records each workflow at ``now``; registering a name again
    replaces its entry, and the others stay, listed by name."""
    assert await store.registered_workflows() == []
    flow = WorkflowInfo(name="b.flow", kind="flow", steps=("draft", "review"), registered_at=at(99))
    script = WorkflowInfo(name="a.script", kind="script", version="2024-06")
    await store.register_workflows([flow, script], at(1))
    assert await store.registered_workflows() == [
        WorkflowInfo(name="a.script", kind="script", version="2024-06", registered_at=at(1)),
        WorkflowInfo(name="b.flow", kind="flow", steps=("draft", "review"), registered_at=at(1)),
    ]
    changed = WorkflowInfo(name="b.flow", kind="flow", steps=("draft",), version=3)
    await store.register_workflows([changed], at(2))
    assert await store.registered_workflows() == [
        WorkflowInfo(name="a.script", kind="script", version="2024-06", registered_at=at(1)),
        WorkflowInfo(name="b.flow", kind="flow", steps=("draft",), version=3, registered_at=at(2)),
    ]


async def test_any_workflow_name_is_recorded_and_no_run_appears(store: Store) -> None:
    """Names with dots, spaces, wildcards and non-ASCII letters are recorded as given,
    and registering creates no run, timer or runnable entry."""
    names = ["orders.v2.flow", "with space", "wild.*.>", "café/straße", "x" * 200, "-_="]
    await store.register_workflows([WorkflowInfo(name=n, kind="script") for n in names], at(1))
    assert [w.name for w in await store.registered_workflows()] == sorted(names)
    assert await store.list_runs() == []
    assert await store.runnable(at(10), 100) == []
    assert await store.due_timers(at(10**6), 100) == []
