"""Addressed messages: ``app.send(run_id, topic, payload, key=None)`` puts a message in one
run's durable mailbox; its next wait on the topic takes the oldest, exactly once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from stemd_examples import approvals

import stemd
from tests.helpers import wait_status, wait_until

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus
DRAFT = {"draft": {"documentId": "doc-42"}}


@stemd.script("messages.collect")
async def collect(ctx: stemd.ScriptContext, waits: int) -> list[Any]:
    """Waits ``waits`` times for a message; returns the payloads in order."""
    return [await ctx.wait_for_event("messages.item") for _ in range(waits)]


@stemd.script("messages.gated")
async def gated(ctx: stemd.ScriptContext, waits: int) -> list[Any]:
    """Waits for the gate, then ``waits`` times for a message; returns the payloads."""
    await ctx.wait_for_event("messages.gate")
    return [await ctx.wait_for_event("messages.item") for _ in range(waits)]


async def _waiting(app: stemd.App, topic: str, run_id: str) -> bool:
    return run_id in {s.run_id for s in await app.runs_waiting_on(topic)}


async def test_send_to_one_of_two_waiting_documents_approves_only_that_one(store: Store) -> None:
    """Two documents wait on approvals.manager: an emit would approve both; a send to one
    approves only that one, and the other keeps waiting."""
    async with stemd.App(store=store, workflows=[approvals]) as app:
        first = await app.start_workflow(approvals, DRAFT, run_id="doc-1")
        second = await app.start_workflow(approvals, DRAFT, run_id="doc-2")
        for run_id in (first, second):
            await wait_until(_waiting, app, "approvals.manager", run_id, what="the wait")
        assert await app.send(first, "approvals.manager", {"approvedBy": "ana"}) is True
        done = await app.wait_for_completion(first, timeout=10)
        assert done.value == "approved-by:ana"
        other = await app.wait_for_completion(second, timeout=0.2)
        assert other.timed_out
        assert other.status is RunStatus.SUSPENDED
        assert [s.run_id for s in await app.runs_waiting_on("approvals.manager")] == [second]


async def test_a_message_sent_before_the_wait_is_taken_there(store: Store) -> None:
    """A message sent right after the start is kept until the run's wait takes it."""
    async with stemd.App(store=store, workflows=[approvals]) as app:
        run_id = await app.start_workflow(approvals, DRAFT)
        assert await app.send(run_id, "approvals.manager", {"approvedBy": "bo"}) is True
        assert (await app.wait_for_completion(run_id, timeout=10)).value == "approved-by:bo"


async def test_messages_are_taken_oldest_first_each_once(store: Store) -> None:
    """Three messages sent at once are taken by three waits, in the order sent; a keyed
    resend is accepted=False and taken by nobody."""
    async with stemd.App(store=store, workflows=[collect]) as app:
        run_id = await app.start_workflow(collect, 3)
        for n in range(3):
            assert await app.send(run_id, "messages.item", n, key=f"item-{n}") is True
        assert await app.send(run_id, "messages.item", 99, key="item-1") is False
        done = await app.wait_for_completion(run_id, timeout=10)
        assert done.value == [0, 1, 2]


async def test_messages_come_before_topic_events(store: Store) -> None:
    """A wait takes the run's messages before the topic's kept events."""
    async with stemd.App(store=store, workflows=[gated]) as app:
        run_id = await app.start_workflow(gated, 2)
        await app.emit("messages.item", "event")
        await app.send(run_id, "messages.item", "message")
        await app.send(run_id, "messages.gate", None)
        done = await app.wait_for_completion(run_id, timeout=10)
        assert done.value == ["message", "event"]


async def test_sending_to_an_unknown_or_ended_run_is_an_error(store: Store) -> None:
    """Send to no such run raises RunNotFound; to an ended run, RunEnded (a StemError);
    bad arguments are refused before anything is written."""
    async with stemd.App(store=store, workflows=[collect]) as app:
        with pytest.raises(stemd.RunNotFound):
            await app.send("ghost", "messages.item", 1)
        run_id = await app.start_workflow(collect, 0)
        await wait_status(app, run_id, RunStatus.COMPLETED)
        with pytest.raises(stemd.RunEnded, match="has ended"):
            await app.send(run_id, "messages.item", 1)
        with pytest.raises(stemd.StemError, match="invalid run id"):
            await app.send("a b", "messages.item", 1)
        with pytest.raises(stemd.StemError, match="invalid topic"):
            await app.send(run_id, "a..b", 1)
        with pytest.raises(stemd.StemError, match="invalid message key"):
            await app.send(run_id, "messages.item", 1, key="")
        with pytest.raises(stemd.PayloadError):
            await app.send(run_id, "messages.item", object())
