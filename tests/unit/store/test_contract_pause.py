"""The Store contract for paused runs (``Store.pause`` / ``Store.resume``), on every kind of
store: a paused run keeps its status, is not claimed, its timers are held, what its wait is
given meanwhile is kept for it, and it goes on where it was when resumed."""

from __future__ import annotations

import pytest

from stemd._errors import LeaseLost
from stemd._model import CancellationPolicy, RunStatus
from stemd._store.base import Checkpoint, Complete, Store, Suspend
from tests.unit.store.test_contract import LEASE, T0, at, emit, enc, record, started, suspended_on

pytestmark = pytest.mark.anyio

KEY = "review@event#0"


async def test_a_paused_run_keeps_its_status_and_is_not_claimed(store: Store) -> None:
    """A paused pending run stays pending, is neither claimed nor listed as runnable, and is
    claimable again (with a new token) once resumed."""
    await store.create_run(record("r1"))
    paused = await store.pause("r1", T0)
    assert paused is not None
    assert paused.paused
    assert paused.status is RunStatus.PENDING
    assert await store.claim("r1", "w1", at(1), LEASE) is None
    assert ("r1", "workflow") not in await store.runnable(at(1), 100)
    resumed = await store.resume("r1", at(2))
    assert resumed is not None
    assert not resumed.paused
    assert resumed.token > paused.token
    assert ("r1", "workflow") in await store.runnable(at(2), 100)
    assert await store.claim("r1", "w1", at(2), LEASE) is not None


async def test_pause_and_resume_change_only_what_they_concern(store: Store) -> None:
    """Pausing a paused, ended or unknown run and resuming a run that is not paused change
    nothing and return None (so a repeated group operation is safe)."""
    await store.create_run(record("r1"))
    claim = await started(store, "r2")
    await store.commit("r2", claim.token, Complete(result=enc(1)), T0)
    assert await store.resume("r1", T0) is None
    assert await store.pause("r1", T0) is not None
    assert await store.pause("r1", at(1)) is None
    assert await store.pause("r2", T0) is None
    assert await store.pause("nope", T0) is None
    assert await store.resume("nope", T0) is None
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.paused
    assert rec.updated_at == T0


async def test_an_event_for_a_paused_run_is_held_until_it_is_resumed(store: Store) -> None:
    """An event (kept or not) emitted while a run is paused does not resume it: it stays
    suspended; resumed, it takes the event as its wait's result, in order, each once."""
    await suspended_on(store, "r1", "t")
    await store.pause("r1", at(1))
    assert await emit(store, "t", enc("first"), at(2), retain=None) == []
    assert await emit(store, "t", enc("second"), at(3)) == []
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.SUSPENDED
    assert rec.paused
    assert [r.run_id for r in await store.runs_waiting_on("t")] == ["r1"]
    resumed = await store.resume("r1", at(4))
    assert resumed is not None
    assert resumed.status is RunStatus.PENDING
    values = {c.name: c.value for c in await store.get_checkpoints("r1")}
    assert values[KEY] == enc("first")
    # Its next wait on the topic takes the second, and nothing else.
    claim = await store.claim("r1", "w1", at(5), LEASE)
    assert claim is not None
    again = Suspend(wait_topic="t", wait_key="review@event#1")
    done = await store.commit("r1", claim.token, again, at(5))
    assert done.record.status is RunStatus.PENDING
    values = {c.name: c.value for c in await store.get_checkpoints("r1")}
    assert values["review@event#1"] == enc("second")
    claim = await store.claim("r1", "w1", at(6), LEASE)
    assert claim is not None
    third = Suspend(wait_topic="t", wait_key="review@event#2")
    assert (await store.commit("r1", claim.token, third, at(6))).record.status is (
        RunStatus.SUSPENDED
    )


async def test_a_message_for_a_paused_run_is_kept_for_it(store: Store) -> None:
    """A message sent to a paused run waiting on its topic is accepted and kept; the run
    takes it when resumed."""
    await suspended_on(store, "r1", "t")
    await store.pause("r1", at(1))
    sent = await store.send_message("r1", "t", enc("m"), at(2))
    assert sent.outcome == "accepted"
    assert not sent.resumed
    assert (await store.get_run("r1")).status is RunStatus.SUSPENDED  # type: ignore[union-attr]
    resumed = await store.resume("r1", at(3))
    assert resumed is not None
    assert resumed.status is RunStatus.PENDING
    values = {c.name: c.value for c in await store.get_checkpoints("r1")}
    assert values[KEY] == enc("m")


async def test_the_timers_of_a_paused_run_are_held(store: Store) -> None:
    """A paused sleeping run has no timer (its wake time passes unnoticed); resumed, its
    timer is due again and fires."""
    claim = await started(store, "r1")
    await store.commit("r1", claim.token, Suspend(resume_at=at(10)), T0)
    paused = await store.pause("r1", at(1))
    assert paused is not None
    assert paused.timer_at is None
    assert "r1" not in [r for _, r in await store.due_timers(at(20), 100)]
    assert (await store.fire_timer("r1", at(20), b"{}")).action == "none"
    resumed = await store.resume("r1", at(30))
    assert resumed is not None
    assert resumed.timer_at == at(10)
    assert resumed.status is RunStatus.SUSPENDED
    assert "r1" in [r for _, r in await store.due_timers(at(30), 100)]
    assert (await store.fire_timer("r1", at(30), b"{}")).action == "woken"


async def test_a_running_run_stops_at_its_next_checkpoint(store: Store) -> None:
    """Pausing a running run does not fence its owner at once: its next checkpoint is
    recorded, then the owner is refused (LeaseLost) and the run waits, pending and
    paused, to go on from that checkpoint when resumed."""
    claim = await started(store, "r1")
    paused = await store.pause("r1", at(1))
    assert paused is not None
    assert paused.status is RunStatus.RUNNING
    with pytest.raises(LeaseLost):
        await store.save_checkpoint("r1", claim.token, Checkpoint("a", enc(1)), at(2))
    rec = await store.get_run("r1")
    assert rec is not None
    assert rec.status is RunStatus.PENDING
    assert rec.paused
    assert rec.lease_owner is None
    assert [c.name for c in await store.get_checkpoints("r1")] == ["a"]
    with pytest.raises(LeaseLost):
        await store.save_checkpoint("r1", claim.token, Checkpoint("b", enc(2)), at(3))
    assert await store.claim("r1", "w2", at(3), LEASE) is None
    await store.resume("r1", at(4))
    again = await store.claim("r1", "w2", at(4), LEASE)
    assert again is not None
    assert [c.name for c in again.checkpoints] == ["a"]


async def test_a_paused_run_commits_its_outcome_and_stays_paused(store: Store) -> None:
    """A paused run's owner may still commit: a suspension stays paused (no timer, no event
    taken); a completion ends the run, which is then no longer paused."""
    claim = await started(store, "r1")
    await store.pause("r1", at(1))
    done = await store.commit("r1", claim.token, Suspend(resume_at=at(5)), at(2))
    assert done.record.paused
    assert done.record.timer_at is None
    claim2 = await started(store, "r2")
    await store.pause("r2", at(1))
    ended = await store.commit("r2", claim2.token, Complete(result=enc(1)), at(2))
    assert ended.record.status is RunStatus.COMPLETED
    assert not ended.record.paused


async def test_a_paused_parent_is_woken_by_its_child_only_when_resumed(store: Store) -> None:
    """A child that ends while its parent is paused leaves the parent suspended; resuming
    the parent wakes it."""
    await store.create_run(record("child"))
    claim = await started(store, "parent")
    await store.commit("parent", claim.token, Suspend(wait_child="child"), T0)
    await store.pause("parent", at(1))
    child = await store.claim("child", "w1", at(2), LEASE)
    assert child is not None
    ended = await store.commit("child", child.token, Complete(result=enc(1)), at(3))
    assert "parent" not in ended.woken
    parent = await store.get_run("parent")
    assert parent is not None
    assert parent.status is RunStatus.SUSPENDED
    resumed = await store.resume("parent", at(4))
    assert resumed is not None
    assert resumed.status is RunStatus.PENDING


async def test_cancelling_a_paused_run_ends_its_pause(store: Store) -> None:
    """A paused run can be cancelled; it is then cancelled and no longer paused."""
    await suspended_on(store, "r1", "t")
    await store.pause("r1", at(1))
    done = await store.cancel("r1", "stop", at(2))
    assert done is not None
    assert done.record.status is RunStatus.CANCELLED
    assert not done.record.paused


async def test_a_paused_workflow_creates_its_runs_paused(store: Store) -> None:
    """While a workflow is paused its new runs are created paused (timers held); other
    workflows are not affected; unpaused, new runs start as usual."""
    assert await store.pause_workflow("wf", True) is True
    assert await store.pause_workflow("wf", True) is False
    assert await store.paused_workflows() == ["wf"]
    policy = CancellationPolicy(max_run_duration=10)
    created, _ = await store.create_run(record("r1", workflow="wf", policy=policy))
    assert created.paused
    assert created.timer_at is None
    stored = await store.get_run("r1")
    assert stored is not None
    assert stored.paused
    other, _ = await store.create_run(record("r2", workflow="other"))
    assert not other.paused
    assert await store.claim("r1", "w1", T0, LEASE) is None
    assert await store.pause_workflow("wf", False) is True
    assert await store.paused_workflows() == []
    later, _ = await store.create_run(record("r3", workflow="wf"))
    assert not later.paused
