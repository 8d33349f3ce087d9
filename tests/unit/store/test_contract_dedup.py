"""Deduplication of starts on every kind of store: a start with a key that a live run of
the workflow holds within the window returns that run; a new window, an ended run or
another key starts a new one; a key taken by a start that died before creating its run
creates that run; concurrent starts of one key create exactly one run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from stemd._engine.dedup import create_once
from stemd._store.base import Complete
from stemd._store.capabilities import Slots
from tests.unit.store.test_contract import LEASE, T0, at, record

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio


async def test_a_key_started_within_the_window_returns_the_live_run(store: Store) -> None:
    """The second start of key k returns the first run, not created; key j starts its own;
    after the window, k starts a new run."""
    first, created = await create_once(store, record("a"), "k", 60, T0)
    assert (first.run_id, created) == ("a", True)
    again, created = await create_once(store, record("b", now=at(30)), "k", 60, at(30))
    assert (again.run_id, created) == ("a", False)
    assert await store.get_run("b") is None
    other, created = await create_once(store, record("c", now=at(30)), "j", 60, at(30))
    assert (other.run_id, created) == ("c", True)
    later, created = await create_once(store, record("d", now=at(60)), "k", 60, at(60))
    assert (later.run_id, created) == ("d", True)


async def test_an_ended_run_does_not_deduplicate(store: Store) -> None:
    """Once the run holding the key has completed, a start with the key starts anew."""
    await create_once(store, record("a"), "k", 60, T0)
    claim = await store.claim("a", "w1", T0, LEASE)
    assert claim is not None
    await store.commit("a", claim.token, Complete(result=b"1"), at(1))
    again, created = await create_once(store, record("b", now=at(2)), "k", 60, at(2))
    assert (again.run_id, created) == ("b", True)
    assert isinstance(store, Slots)
    assert await store.slot_holders("dedup:wf:k", at(2)) == ["b"]


async def test_a_key_taken_by_a_start_that_died_creates_that_run(store: Store) -> None:
    """A key held by a run id that was never created (its starter died in between): the
    next start of the key creates the run with that id."""
    assert isinstance(store, Slots)
    assert await store.acquire_slot("dedup:wf:k", "lost", 1, T0, at(60))
    stored, created = await create_once(store, record("b", now=at(1)), "k", 60, at(1))
    assert (stored.run_id, created) == ("lost", True)
    assert await store.get_run("b") is None
    assert await store.get_run("lost") is not None


async def test_concurrent_starts_of_one_key_create_one_run(store: Store) -> None:
    """Twenty starts of one key at once: one is created, all return its id."""
    results: list[tuple[str, bool]] = []

    async def start(i: int) -> None:
        stored, created = await create_once(store, record(f"r{i}"), "k", 60, T0)
        results.append((stored.run_id, created))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(start, i)
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
