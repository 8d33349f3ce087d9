"""What the JetStream KV store adds to event retention: kept events are messages with a
time to live, forgotten by the server when their retention ends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

import stemd
from stemd._natsconn import open_connection
from stemd._store.base import Suspend
from stemd._store.jetstream import JetStreamStore
from stemd.testing import ManualClock
from tests.helpers import wait_status, wait_until
from tests.unit.store.test_contract import at, emit, enc, rewait, started

if TYPE_CHECKING:
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

START = datetime(2030, 1, 1, tzinfo=UTC)


@stemd.script("kvevents.later")
async def later(ctx: stemd.ScriptContext) -> str:
    """Sleeps, then waits for an event on its topic; returns its payload."""
    await ctx.sleep(20)
    return str(await ctx.wait_for_event("kvevents.later"))


async def test_an_event_past_its_retention_is_forgotten_by_the_server(nats: NatsServer) -> None:
    """An event kept 1 s is gone from the bucket after that second: a wait that comes
    later does not take it; the next event reaches it."""
    clock = ManualClock(START)
    async with stemd.App(
        store=nats.url,
        workflows=[later],
        clock=clock,
        options=stemd.AppOptions(event_retention=1),
    ) as app:
        run_id = await app.start_workflow(later)
        await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)
        await app.emit("kvevents.later", "short")
        store = app.store
        assert isinstance(store, JetStreamStore)

        async def forgotten() -> bool:
            return await store._events._get_last("kvevents.later") is None

        await wait_until(forgotten, timeout=10, what="the event to expire")
        clock.advance(21)

        async def waiting() -> bool:
            return bool(await app.runs_waiting_on("kvevents.later"))

        await wait_until(waiting, what="the run to wait")
        assert await app.emit("kvevents.later", "next") == 1
        assert (await app.wait_for_completion(run_id, timeout=10)).value == "next"


async def test_a_bucket_made_before_events_gets_message_ttls(nats: NatsServer) -> None:
    """Opening a bucket whose stream was created without per-message TTLs turns them on
    (keeping every run in it)."""
    old = JetStreamStore(nats.url, bucket="olden")
    config = old.stream_config()
    del config["allow_msg_ttl"]
    conn = await open_connection(nats.url, name="t")
    try:
        await conn.ensure_stream(config)
        await conn.js_publish("$KV.olden.marker", b"x")
        await old.open()
        try:
            info = await conn.js_api("STREAM.INFO.KV_olden")
            assert info["config"]["allow_msg_ttl"] is True
            assert info["state"]["messages"] == 1
            event = await old.append_event("t.x", b"1", START, 5)
            assert event.expires_at is not None
        finally:
            await old.close()
    finally:
        await conn.close()


async def test_a_hand_made_key_among_a_topics_events_does_not_stop_emits(
    nats: NatsServer,
) -> None:
    """A key put by hand where a topic's events live (not numbered) does not stop the next
    emits from being kept and delivered."""
    store = JetStreamStore(nats.url, bucket="handmade")
    await store.open()
    try:
        await store.conn.js_publish(f"$KV.{store.bucket}.evt.t.x.note", b"by hand")
        first = await store.append_event("t.x", b"1", START, 60)
        second = await store.append_event("t.x", b"2", START, 60)
        assert second.prev == first.seq > first.prev > 0
    finally:
        await store.close()


async def test_a_delivery_to_a_run_waiting_on_several_topics_gives_the_oldest_event(
    nats: NatsServer,
) -> None:
    """A run suspends on [a, b] with b1 kept from before its wait; a1's delivery reaches it
    between its suspension and its own look at the kept events: it takes b1 (the older)
    first, then a1 at its next wait."""
    store = JetStreamStore(nats.url, bucket="anyorder")
    await store.open()
    try:
        claim = await started(store, "r1")
        await emit(store, "t.b", enc("b1"), at(1))
        events = store._events
        take_kept = events.take_kept
        delivered: list[str] = []

        async def emit_first(*args: object) -> object:
            # The emit of a1 comes between the suspension's write and the run's look.
            delivered.extend(await emit(store, "t.a", enc("a1"), at(2)))
            return await take_kept(*args)  # type: ignore[arg-type]

        events.take_kept = emit_first  # type: ignore[method-assign]
        suspend = Suspend(wait_topic="t.a", wait_topics=("t.a", "t.b"), wait_key="w@any#0")
        await store.commit("r1", claim.token, suspend, at(2))
        events.take_kept = take_kept  # type: ignore[method-assign]
        assert delivered == ["r1"]
        [taken] = [c.value for c in await store.get_checkpoints("r1") if c.name == "w@any#0"]
        assert taken == enc("b1")
        await rewait(store, "r1", ("t.a", "t.b"), at(3), n=1)
        [second] = [c.value for c in await store.get_checkpoints("r1") if c.name == "w@event#1"]
        assert second == enc("a1")
    finally:
        await store.close()
