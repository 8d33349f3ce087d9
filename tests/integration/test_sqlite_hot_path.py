"""The SQLite store's hot path: the writer's cache of the run rows it wrote never answers
for a row that another process changed or that a rolled-back transaction wrote, and a
claim whose caller is cancelled is given back."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from stemd._errors import LeaseLost
from stemd._model import RunStatus
from stemd._store.base import Checkpoint, Complete, Suspend
from stemd._store.sqlite_cache import RowCache
from tests.helpers import wait_until
from tests.integration.test_sqlite_store import (
    NOW,
    _queued,
    opened,
    record,
    writer_held,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


def cache_of(store: Any) -> RowCache:
    """The row cache of an opened store's writer."""
    rows = store.writer.rows
    assert isinstance(rows, RowCache)
    return rows


async def test_the_hot_path_is_served_from_the_cache(tmp_path: Path) -> None:
    """A run served from the cache ends as stored, and leaves the cache when it ends."""
    async with opened(tmp_path / "x.db") as store:
        await store.create_run(record("r1"))
        assert len(cache_of(store)) == 1
        claim = await store.claim("r1", "w", NOW, 30)
        assert claim is not None
        assert claim.token == 1
        await store.save_checkpoint("r1", claim.token, Checkpoint("a", b"1"), NOW)
        result = await store.commit("r1", claim.token, Complete(result=b"2"), NOW)
        assert result.record.status.is_terminal
        assert len(cache_of(store)) == 0
        stored = await store.get_run("r1")
        assert stored == result.record


async def test_a_claim_by_another_process_is_seen(tmp_path: Path) -> None:
    """A run claimed by another store after this one created it is not claimed again here."""
    path = tmp_path / "x.db"
    async with opened(path) as a, opened(path) as b:
        await a.create_run(record("r1"))
        taken = await b.claim("r1", "b", NOW, 30)
        assert taken is not None
        assert await a.claim("r1", "a", NOW, 30) is None
        with pytest.raises(LeaseLost):
            await a.commit("r1", 0, Complete(result=b"1"), NOW)
        done = await b.commit("r1", taken.token, Complete(result=b"1"), NOW)
        assert done.record.status.is_terminal


async def test_a_rolled_back_batch_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    """A claim replayed after its batch rolled back sees the stored row, not its unwritten one."""
    async with opened(tmp_path / "x.db") as store:
        await store.create_run(record("r1"))
        await store.create_run(record("r2"))
        claim2 = await store.claim("r2", "w", NOW, 30)
        assert claim2 is not None
        # Not bindable: the commit fails in SQLite after the claim of r1 was applied.
        bad = Complete(result=b"x", checkpoints=(Checkpoint("c", [1]),))  # type: ignore[arg-type]
        results: dict[str, Any] = {}

        async def claim1() -> None:
            results["claim"] = await store.claim("r1", "w", NOW, 30)

        async def commit2() -> None:
            try:
                await store.commit("r2", claim2.token, bad, NOW)
            except Exception as exc:
                results["commit"] = exc

        async with writer_held(store) as gate, anyio.create_task_group() as tg:
            tg.start_soon(claim1)
            await wait_until(lambda: _queued(store, 1), what="the claim queued")
            tg.start_soon(commit2)
            await wait_until(lambda: _queued(store, 2), what="2 queued writes")
            gate.set()
        assert store.statistics().fallbacks == 1
        assert "commit" in results
        assert results["claim"] is not None
        assert results["claim"].token == 1
        stored = await store.get_run("r1")
        assert stored is not None
        assert stored.token == 1


async def test_a_claim_cancelled_before_its_answer_is_given_back(tmp_path: Path) -> None:
    """A claim cancelled while the writer commits it is given back: the run is runnable again."""
    async with opened(tmp_path / "x.db") as store:
        await store.create_run(record("r1"))
        async with writer_held(store) as gate:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(store.claim, "r1", "w", NOW, 30)
                    await wait_until(lambda: _queued(store, 1), what="the claim queued")
                    scope.cancel()
            gate.set()

        async def given_back() -> bool:
            run = await store.get_run("r1")
            assert run is not None
            return run.token == 1 and run.status is RunStatus.PENDING

        await wait_until(given_back, what="the claim given back")
        run = await store.get_run("r1")
        assert run is not None
        assert run.lease_owner is None
        again = await store.claim("r1", "w2", NOW, 30)
        assert again is not None
        assert again.token == 2


async def test_a_full_cache_takes_no_new_runs_and_stays_true(tmp_path: Path) -> None:
    """A full cache takes no new runs, and runs outside it claim and commit alike."""
    async with opened(tmp_path / "x.db") as store:
        rows = cache_of(store)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("stemd._store.sqlite_cache.LIMIT", 3)
            for i in range(5):
                await store.create_run(record(f"r{i}"))
            assert len(rows) == 3
            for i in range(5):
                claim = await store.claim(f"r{i}", "w", NOW, 30)
                assert claim is not None
                done = await store.commit(f"r{i}", claim.token, Complete(result=b"1"), NOW)
                assert done.record.status is RunStatus.COMPLETED
            assert len(rows) == 0


async def test_a_start_sees_pauses_and_events_since_the_last_start(tmp_path: Path) -> None:
    """A start sees a pause (here or in another store) and an event since the previous start."""
    path = tmp_path / "x.db"
    async with opened(path) as a, opened(path) as b:
        first, _ = await a.create_run(record("r1"))
        assert not first.paused
        await b.pause_workflow("w", True)
        paused, _ = await a.create_run(record("r2"))
        assert paused.paused
        await a.pause_workflow("w", False)
        event = await a.append_event("t", b"1", NOW, None)
        later, _ = await a.create_run(record("r3"))
        assert not later.paused
        assert later.event_floor == event.seq > first.event_floor


async def test_a_child_ending_wakes_a_parent_that_another_process_suspended(
    tmp_path: Path,
) -> None:
    """A child's end wakes a parent that another store suspended on it after this one looked."""
    path = tmp_path / "x.db"
    async with opened(path) as a, opened(path) as b:
        await a.create_run(record("child"))
        await a.create_run(record("other"))
        other = await a.claim("other", "a", NOW, 30)
        assert other is not None
        await a.commit("other", other.token, Complete(result=b"1"), NOW)  # none waits
        await b.create_run(record("parent"))
        parent = await b.claim("parent", "b", NOW, 30)
        assert parent is not None
        await b.commit("parent", parent.token, Suspend(wait_child="child", wait_key="k"), NOW)
        child = await a.claim("child", "a", NOW, 30)
        assert child is not None
        done = await a.commit("child", child.token, Complete(result=b"2"), NOW)
        assert done.woken == ("parent",)
