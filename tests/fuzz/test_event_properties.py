"""Property tests of event delivery (hypothesis, memory and SQLite stores): random
interleavings of run creations, emits (kept or not), delivery pages of several emits in
flight at once, re-waits of resumed runs on one or two topics, and messages (some keyed),
each a store operation, in any order.

Whatever the order, once every delivery has finished and every run has waited until
nothing is left for it:

- a run takes no event and no message twice;
- it takes every kept event of its topics emitted after its creation, and none emitted
  before; an event that is not kept, at most once;
- it takes the events of one topic in the order they were emitted, and the messages of
  one topic in the order they were sent;
- it takes every message sent to it, except a second one with a key already used.
"""

from __future__ import annotations

import tempfile
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemd._model import RunStatus
from stemd._store import store_from_url
from stemd._store.base import Event, RunRecord, Store, Suspend
from tests.chaos.harness import scale

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

T0 = datetime(2030, 1, 1, tzinfo=UTC)
RUNS = ("r0", "r1", "r2")
TOPICS = ("a", "b")

Op = tuple[Any, ...]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("create"), st.sampled_from(RUNS)),
        st.tuples(st.just("emit"), st.sampled_from(TOPICS), st.booleans()),
        st.tuples(st.just("deliver"), st.integers(0, 3), st.integers(1, 2)),
        st.tuples(
            st.just("wait"),
            st.sampled_from(RUNS),
            st.sampled_from([("a",), ("b",), ("a", "b"), ("b", "a")]),
        ),
        st.tuples(
            st.just("send"),
            st.sampled_from(RUNS),
            st.sampled_from(TOPICS),
            st.sampled_from([None, None, "k1", "k2"]),
        ),
    ),
    max_size=40,
)


@asynccontextmanager
async def opened(kind: str) -> AsyncIterator[Store]:
    """A store of ``kind`` (memory, SQLite in a temporary directory), open for the block."""
    with tempfile.TemporaryDirectory() as tmp:
        url = "memory://" if kind == "memory" else "sqlite:///" + str(Path(tmp) / "p.db")
        store = store_from_url(url)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


class Model:
    """What was done, to check what the runs took against."""

    def __init__(self) -> None:
        self.clock = 0
        self.created: dict[str, int] = {}  # run → its creation's place in the order
        self.events: list[tuple[int, str, bool, str]] = []  # (place, topic, kept, id)
        self.sent: dict[str, list[tuple[str, str]]] = {}  # run → [(topic, id)] accepted
        self.waits: dict[str, int] = {}
        self.flight: list[list[Any]] = []  # deliveries in flight: [event, after]

    def tick(self) -> datetime:
        self.clock += 1
        return T0 + timedelta(milliseconds=self.clock)


async def wait(store: Store, model: Model, run_id: str, topics: tuple[str, ...]) -> None:
    """Claim ``run_id`` if it is runnable and suspend it on ``topics``."""
    now = model.tick()
    claim = await store.claim(run_id, "w", now, 30.0)
    if claim is None:
        return
    n = model.waits.get(run_id, 0)
    model.waits[run_id] = n + 1
    suspend = Suspend(
        wait_topic=topics[0],
        wait_topics=topics if len(topics) > 1 else None,
        wait_key=f"w@any#{n}",
    )
    await store.commit(run_id, claim.token, suspend, now)


async def apply(store: Store, model: Model, op: Op) -> None:
    """Apply one operation of the plan to the store and to the model."""
    kind = op[0]
    if kind == "create":
        now = model.tick()
        rec = RunRecord(
            run_id=op[1],
            workflow="wf",
            status=RunStatus.PENDING,
            params=b"null",
            created_at=now,
            updated_at=now,
        )
        if (await store.create_run(rec))[1]:
            model.created[op[1]] = model.clock
    elif kind == "emit":
        _, topic, kept = op
        ident = f"e{len(model.events)}"
        event = await store.append_event(
            topic, msgspec.json.encode(ident), model.tick(), 3600.0 if kept else None
        )
        model.events.append((model.clock, topic, kept, ident))
        model.flight.append([event, 0])
    elif kind == "deliver":
        _, index, limit = op
        if model.flight:
            await deliver_page(store, model, index % len(model.flight), limit)
    elif kind == "wait":
        await wait(store, model, op[1], op[2])
    else:
        _, run_id, topic, key = op
        ident = f"m{model.clock}"
        sent = await store.send_message(
            run_id, topic, msgspec.json.encode(ident), model.tick(), key
        )
        if sent.outcome == "accepted":
            model.sent.setdefault(run_id, []).append((topic, ident))


async def deliver_page(store: Store, model: Model, index: int, limit: int) -> None:
    """Deliver one page of an emitted event and record the resumed runs in the model."""
    entry = model.flight[index]
    event: Event = entry[0]
    done = await store.deliver_event(event, model.tick(), after=entry[1], limit=limit)
    if done.after is None:
        del model.flight[index]
    else:
        entry[1] = done.after


async def drain(store: Store, model: Model) -> None:
    """Finish every delivery; let every run wait on both topics until nothing is left (a
    run suspended on one topic only is sent a message there to move it on)."""
    while model.flight:
        await deliver_page(store, model, 0, 1000)
    while True:
        moved = False
        for run_id in model.created:
            rec = await store.get_run(run_id)
            assert rec is not None
            if rec.status is RunStatus.PENDING:
                await wait(store, model, run_id, TOPICS)
                moved = True
            elif rec.wait_topics is None and rec.wait_topic is not None:
                await apply(store, model, ("send", run_id, rec.wait_topic, None))
                moved = True
        if not moved:
            return


async def check(store: Store, model: Model) -> None:
    """Check the store against the model: every run took its events in order, each once."""
    for run_id, born in model.created.items():
        taken = [
            msgspec.json.decode(c.value)
            for c in await store.get_checkpoints(run_id)
            if c.name.startswith("w@")
        ]
        assert len(taken) == len(set(taken)), (run_id, taken)
        events = {ident: (place, topic, kept) for place, topic, kept, ident in model.events}
        got_events = [t for t in taken if t in events]
        for ident in got_events:
            assert events[ident][0] > born, f"{run_id} took {ident}, emitted before it"
        for topic in TOPICS:
            mine = [t for t in got_events if events[t][1] == topic]
            assert mine == sorted(mine, key=lambda t: events[t][0]), (run_id, topic, mine)
            kept = [i for p, tp, k, i in model.events if tp == topic and k and p > born]
            assert set(kept) <= set(mine), (run_id, topic, kept, mine)
        sent = model.sent.get(run_id, [])
        got_messages = [t for t in taken if t.startswith("m")]
        assert sorted(got_messages) == sorted(i for _, i in sent), (run_id, sent, taken)
        for topic in TOPICS:
            order = [i for tp, i in sent if tp == topic]
            assert [t for t in got_messages if t in order] == order


async def play(kind: str, plan: list[Op]) -> None:
    """Play a plan on a store of ``kind`` and check it after every step."""
    async with opened(kind) as store:
        model = Model()
        for op in plan:
            await apply(store, model, op)
        await drain(store, model)
        await check(store, model)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_interleaved_emits_waits_and_sends_deliver_each_once_in_order(kind: str) -> None:
    """Any interleaving of emits, delivery pages, re-waits and sends gives each run every
    kept event after its creation and every accepted message, each once, in order."""

    @settings(
        max_examples=scale(150 if kind == "memory" else 40, 3000),
        deadline=None,
        database=None,
    )
    @given(plan=ops)
    def prop(plan: list[Op]) -> None:
        anyio.run(play, kind, plan)

    prop()
