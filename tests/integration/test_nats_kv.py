"""What the JetStream KV store adds to the store contract (which tests/unit/store runs on
it): several store instances on one bucket, crash leftovers in the index, the message size
limit, NATS outages, and timers driven through a daemon."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

import stemd
from stemd._errors import PayloadError, TransportError
from stemd._model import RunStatus
from stemd._natsconn import NatsConnection, PubAck
from stemd._store import jetstream_index
from stemd._store import jetstream_listing as listing
from stemd._store.base import Checkpoint, Complete, RunRecord, Suspend, compute_timer_at
from stemd._store.jetstream import JetStreamStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def record(run_id: str, **fields: Any) -> RunRecord:
    """A pending run record with ``fields`` and its timer index set."""
    fields.setdefault("params", b"{}")
    rec = RunRecord(
        run_id=run_id,
        workflow="wf",
        status=RunStatus.PENDING,
        created_at=T0,
        updated_at=T0,
        **fields,
    )
    rec.timer_at = compute_timer_at(rec)
    return rec


@asynccontextmanager
async def open_store(url: str, **options: Any) -> AsyncIterator[JetStreamStore]:
    """An opened JetStream KV store on ``url``, closed on exit."""
    store = JetStreamStore.from_url(url, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_racing_claims_from_two_instances_have_one_winner(nats: NatsServer) -> None:
    """Claims racing from two store instances (two daemons) on one run: exactly one wins."""
    async with open_store(nats.url) as a, open_store(nats.url) as b:
        for i in range(20):
            await a.create_run(record(f"r{i}"))
        wins: list[tuple[str, str]] = []

        async def claim(store: JetStreamStore, owner: str, run_id: str) -> None:
            if await store.claim(run_id, owner, T0, 30.0) is not None:
                wins.append((run_id, owner))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                for store, owner in ((a, "a"), (b, "b"), (a, "a2"), (b, "b2")):
                    tg.start_soon(claim, store, owner, f"r{i}")
        assert sorted(run_id for run_id, _ in wins) == sorted(f"r{i}" for i in range(20))
        for run_id, owner in wins:
            rec = await b.get_run(run_id)
            assert rec is not None
            assert rec.lease_owner == owner
            assert rec.attempts == 1


async def test_a_stale_owner_on_another_instance_is_fenced(nats: NatsServer) -> None:
    """After another instance took over an expired lease, the old owner's writes fail."""
    async with open_store(nats.url) as a, open_store(nats.url) as b:
        await a.create_run(record("r1"))
        old = await a.claim("r1", "a", T0, 30.0)
        assert old is not None
        new = await b.claim("r1", "b", T0 + timedelta(seconds=31), 30.0)
        assert new is not None
        with pytest.raises(stemd.LeaseLost):
            await a.save_checkpoint("r1", old.token, Checkpoint("s", b"1"), T0)
        with pytest.raises(stemd.LeaseLost):
            await a.commit("r1", old.token, Complete(result=b"1"), T0)
        await b.commit("r1", new.token, Complete(result=b"2"), T0)
        rec = await a.get_run("r1")
        assert rec is not None
        assert rec.result == b"2"


async def test_index_entries_left_by_a_crash_are_ignored_then_removed(
    nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index entry left by a dead writer changes no answer and is removed once old."""
    async with open_store(nats.url) as store:
        await store.create_run(record("r1"))
        claim = await store.claim("r1", "w", T0, 30.0)
        assert claim is not None
        await store.commit("r1", claim.token, Suspend(wait_topic="t.go", wait_key="k"), T0)
        await store.create_run(record("r2"))
        leftovers = ["idx.watch.t.go.r2.dead1", "idx.live.ghost.dead2", "idx.timer.1.r2.dead3"]
        for key in leftovers:
            await store.conn.js_publish(f"$KV.{store.bucket}.{key}", b"")
        assert [r.run_id for r in await store.runs_waiting_on("t.go")] == ["r1"]
        assert await store.runnable(T0, 10) == [("r2", "workflow")]
        assert await store.due_timers(T0 + timedelta(days=1), 10) == []
        monkeypatch.setattr(jetstream_index, "STALE_AFTER", timedelta(0))
        event = await store.append_event("t.go", b"{}", T0, 60)
        assert (await store.deliver_event(event, T0)).resumed == ["r1"]
        await store.runnable(T0, 10)
        await store.due_timers(T0 + timedelta(days=1), 10)
        keys = await store._bucket.keys("idx.>")
        assert not any(key in keys for key in leftovers)
        assert any(key.startswith("idx.live.r2.") for key in keys)


async def test_a_run_too_large_for_one_message_is_refused_unchanged(nats: NatsServer) -> None:
    """A write too large for one NATS message raises PayloadError and changes nothing."""
    async with open_store(nats.url) as store:
        await store.create_run(record("r1"))
        claim = await store.claim("r1", "w", T0, 30.0)
        assert claim is not None
        with pytest.raises(PayloadError):
            await store.save_checkpoint("r1", claim.token, Checkpoint("big", b"x" * 2**20), T0)
        assert await store.get_checkpoints("r1") == []
        await store.save_checkpoint("r1", claim.token, Checkpoint("small", b"1"), T0)
        assert [c.name for c in await store.get_checkpoints("r1")] == ["small"]
        with pytest.raises(PayloadError):
            await store.create_run(record("r2", params=b"x" * 2**20))
        assert await store.get_run("r2") is None


class _OldDoc(msgspec.Struct, kw_only=True):
    """A run document as written before checkpoint times were recorded."""

    rec: RunRecord
    cps: dict[str, bytes]


async def test_a_document_without_checkpoint_times_reads_and_gains_them(
    nats: NatsServer,
) -> None:
    """A document written before checkpoint times existed reads back (its checkpoints
    with no time), and later writes to it record theirs."""
    async with open_store(nats.url) as store:
        old = _OldDoc(rec=record("r1"), cps={"a": b"1"})
        await store.conn.js_publish(f"$KV.{store.bucket}.run.r1", msgspec.msgpack.encode(old))
        assert await store.get_checkpoints("r1") == [Checkpoint("a", b"1", None)]
        claim = await store.claim("r1", "w", T0, 30.0)
        assert claim is not None
        assert claim.checkpoints == [Checkpoint("a", b"1", None)]
        later = T0 + timedelta(seconds=3)
        await store.save_checkpoint("r1", claim.token, Checkpoint("b", b"2"), later)
        assert await store.get_checkpoints("r1") == [
            Checkpoint("a", b"1", None),
            Checkpoint("b", b"2", later),
        ]


async def test_a_write_whose_acknowledgement_is_lost_is_not_done_twice(
    nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write stored whose ack is lost is found by reading back: success, not conflict."""
    async with open_store(nats.url, retry_for=5) as store:
        await store.create_run(record("r1"))
        claim = await store.claim("r1", "w", T0, 30.0)
        assert claim is not None
        real = NatsConnection.js_publish
        lost: list[str] = []

        async def publish_then_lose_ack(
            self: NatsConnection, subject: str, *a: Any, **k: Any
        ) -> PubAck:
            ack = await real(self, subject, *a, **k)
            if subject.endswith(".run.r1") and not lost:
                lost.append(subject)
                raise TransportError("reply lost")
            return ack

        monkeypatch.setattr(NatsConnection, "js_publish", publish_then_lose_ack)
        result = await store.commit("r1", claim.token, Complete(result=b"42"), T0)
        assert lost
        assert result.record.status is RunStatus.COMPLETED
        rec = await store.get_run("r1")
        assert rec is not None
        assert rec.result == b"42"


async def test_operations_wait_out_a_nats_restart(nats: NatsServer) -> None:
    """Data survives a server SIGKILL; an operation made while it is down completes later."""
    async with open_store(nats.url, timeout=1, retry_for=20) as store:
        await store.create_run(record("r1"))
        claim = await store.claim("r1", "w", T0, 30.0)
        assert claim is not None
        nats.kill()
        done = anyio.Event()

        async def commit_meanwhile() -> None:
            await store.commit("r1", claim.token, Complete(result=b"1"), T0)
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(commit_meanwhile)
            await anyio.sleep(0.5)
            assert not done.is_set()
            await nats.start()
            with anyio.fail_after(15):
                await done.wait()
        rec = await store.get_run("r1")
        assert rec is not None
        assert rec.status is RunStatus.COMPLETED


sleeper = stemd.Flow("sleeper.flow")


@sleeper.step("nap")
async def nap(ctx: stemd.FlowContext) -> str:
    """Sleeps durably for 0.3 s."""
    await ctx.sleep(0.3)
    return "rested"


@sleeper.step("wait")
async def wait_briefly(ctx: stemd.FlowContext) -> str:
    """Waits 0.3 s for an event that never comes."""
    try:
        await ctx.wait_for_event("never", timeout=0.3)
    except stemd.EventTimeout:
        return "timed out"
    return "event"


async def test_timers_fire_through_a_daemon_on_kv(nats: NatsServer) -> None:
    """Durable sleeps and event timeouts fire with the KV store and JetStream broker."""
    async with stemd.App(store=nats.url, broker=nats.url, workflows=[sleeper]) as app:
        started = anyio.current_time()
        run_id = await app.start_workflow(sleeper)
        result = await app.wait_for_completion(run_id, timeout=10)
        assert result.value == "timed out"
        assert anyio.current_time() - started >= 0.6
        assert result.state is not None
        assert result.state.checkpoints["nap"] == "rested"
        assert msgspec.json.encode(result.state.status) == b'"completed"'


async def test_listings_beyond_one_batched_read(nats: NatsServer) -> None:
    """Listings still see every run past the 1,024 subjects one batched read returns."""
    async with open_store(nats.url) as store:
        limit = anyio.Semaphore(64)

        async def create(i: int) -> None:
            async with limit:
                await store.create_run(record(f"r{i:04d}"))

        async with anyio.create_task_group() as tg:
            for i in range(1100):
                tg.start_soon(create, i)
        assert len(await store.list_runs(limit=5000)) == 1100
        assert len(await store.runnable(T0, 5000)) == 1100
        assert len(await store.list_runs(limit=10)) == 10


child_flow = stemd.Flow("child.flow")


@child_flow.step("double")
async def double(ctx: stemd.FlowContext) -> int:
    """Returns twice its params."""
    return int(ctx.params) * 2


@stemd.script("parent.script")
async def parent_script(ctx: stemd.ScriptContext, count: int) -> list[int]:
    """Starts ``count`` children, then waits for each; returns their results."""
    children = [await ctx.start_child("child.flow", i) for i in range(count)]
    return [await ctx.wait_child(child, type=int) for child in children]


async def test_parents_wait_for_their_children_on_kv(nats: NatsServer) -> None:
    """Parents suspended on children are woken when each child ends, however they race."""
    workflows = [child_flow, parent_script]
    async with stemd.App(store=nats.url, broker=nats.url, workflows=workflows) as app:
        parents = [await app.start_workflow(parent_script, 6) for _ in range(10)]
        for run_id in parents:
            result = await app.wait_for_completion(run_id, timeout=20)
            assert result.value == [0, 2, 4, 6, 8, 10], result


async def test_a_deleted_runs_timer_is_not_due_while_its_entry_is_still_listed(
    nats: NatsServer,
) -> None:
    """A run deleted by its retention timer is not due again even while the deletion of
    its timer entry (sent without waiting) has not been done yet: the check of that entry
    remembered from an earlier look is forgotten with the run."""
    async with open_store(nats.url) as store:

        async def late(key: str) -> None:  # the purge of the entry not done yet
            return None

        await store.create_run(record("r1", ttl=60.0))
        claim = await store.claim("r1", "w1", T0, 30.0)
        assert claim is not None
        ended = T0 + timedelta(seconds=10)
        await store.commit("r1", claim.token, Complete(result=b"1"), ended)
        later = T0 + timedelta(seconds=100)
        assert [rid for _, rid in await store.due_timers(later, 10)] == ["r1"]
        store._timers.index.bucket.forget = late  # type: ignore[method-assign]
        assert (await store.fire_timer("r1", later, b"null")).action == "deleted"
        assert await store.due_timers(later, 10) == []


async def _create_many(store: JetStreamStore, count: int) -> None:
    limit = anyio.Semaphore(64)

    async def create(i: int) -> None:
        async with limit:
            await store.create_run(record(f"p{i:04d}"))

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(create, i)


async def _walk(store: JetStreamStore, **filters: Any) -> list[str]:
    """Every run of a listing, page by page (100 a page)."""
    ids: list[str] = []
    after = None
    while True:
        page = await store.page_runs(limit=100, after=after, **filters)
        ids += [r.run_id for r in page.records]
        if page.next is None:
            return ids
        after = page.next


async def test_walking_a_listing_page_by_page_reads_the_documents_once(
    nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages after the first are cut from the first page's reading of every document
    (a group operation over N runs read them N / page times before); each run comes once,
    newest first. A walk begun longer ago than the window reads them again."""
    async with open_store(nats.url) as store:
        await _create_many(store, 350)
        reads = 0
        read_all = store._records.read_all

        async def counted() -> Any:
            nonlocal reads
            reads += 1
            return await read_all()

        monkeypatch.setattr(store._records, "read_all", counted)
        ids = await _walk(store)
        assert reads == 1
        assert len(ids) == len(set(ids)) == 350
        assert ids == [r.run_id for r in await store.list_runs(limit=1000)]
        assert reads == 2  # a first page always reads afresh
        # Runs changed between pages are listed as the walk's reading found them, once.
        first = await store.page_runs(limit=100, status=RunStatus.PENDING)
        for run_id in ids[100:200]:
            assert await store.claim(run_id, "w", T0, 30) is not None
        rest = await store.page_runs(limit=1000, after=first.next, status=RunStatus.PENDING)
        assert reads == 3
        assert [r.run_id for r in first.records + rest.records] == ids
        monkeypatch.setattr(listing, "SNAPSHOT_FOR", 0.0)
        fresh = await store.page_runs(limit=1000, after=first.next, status=RunStatus.PENDING)
        assert reads == 4
        assert [r.run_id for r in fresh.records] == ids[200:]
        # A reading is let go once too old to serve a page.
        monkeypatch.setattr(listing, "SNAPSHOT_FOR", 0.05)
        await store.page_runs(limit=10)
        assert store._index.last_listing is not None
        await anyio.sleep(0.2)
        assert store._index.last_listing is None


async def test_a_listed_record_changed_by_its_caller_leaves_the_next_pages_alone(
    nats: NatsServer,
) -> None:
    """Pages of one walk share a reading: each page hands out records of its own."""
    async with open_store(nats.url) as store:
        await _create_many(store, 30)
        first = await store.page_runs(limit=10)
        rest = await store.page_runs(limit=30, after=first.next)
        for rec in rest.records:
            rec.workflow = "changed by the caller"
        again = await store.page_runs(limit=30, after=first.next)
        assert len(again.records) == 20
        assert {r.workflow for r in again.records} == {"wf"}
