"""The slots of flow control (``acquire_slot`` / ``release_slot``), on every kind of store:
never more holders than the limit, a holder renews its hold, and an expired hold frees its
slot."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

from stemd._store.capabilities import Slots
from tests.unit.store.test_contract import T0, at

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio


async def test_slots_hold_at_most_the_limit(store: Store) -> None:
    """Two slots: two holders get one, a third is refused until one is released; a holder
    asking again is renewed; scopes are independent."""
    assert isinstance(store, Slots)
    assert await store.acquire_slot("wf:a", "h1", 2, T0, at(30))
    assert await store.acquire_slot("wf:a", "h2", 2, T0, at(30))
    assert not await store.acquire_slot("wf:a", "h3", 2, at(1), at(31))
    assert await store.acquire_slot("wf:a", "h1", 2, at(1), at(31))
    assert await store.acquire_slot("wf:b", "h3", 2, at(1), at(31))
    await store.release_slot("wf:a", "h2")
    await store.release_slot("wf:a", "nobody")
    assert await store.acquire_slot("wf:a", "h3", 2, at(2), at(32))
    assert not await store.acquire_slot("wf:a", "h4", 2, at(2), at(32))


async def test_an_expired_hold_frees_its_slot(store: Store) -> None:
    """A hold not renewed by its expiry (its holder died) no longer counts."""
    assert isinstance(store, Slots)
    assert await store.acquire_slot("key:a:k", "dead", 1, T0, at(10))
    assert not await store.acquire_slot("key:a:k", "next", 1, at(9), at(19))
    assert await store.acquire_slot("key:a:k", "next", 1, at(10), at(20))


async def test_many_holders_at_once_all_get_a_slot_of_one_scope(store: Store) -> None:
    """A hundred holders taking (then giving up) a slot of one scope at once, as the runs
    waiting in a limit's line do: every one gets its slot and gives it up (writers of one
    hot key take turns, none fails)."""
    assert isinstance(store, Slots)
    holders = [f"h{i}" for i in range(100)]
    got: list[bool] = []

    async def take(holder: str) -> None:
        got.append(await store.acquire_slot("line:wf:hot", holder, 2**31, T0, at(60)))

    async with anyio.create_task_group() as tg:
        for holder in holders:
            tg.start_soon(take, holder)
    assert got == [True] * len(holders)
    assert await store.slot_holders("line:wf:hot", T0) == sorted(holders)
    async with anyio.create_task_group() as tg:
        for holder in holders:
            tg.start_soon(store.release_slot, "line:wf:hot", holder)
    assert await store.slot_holders("line:wf:hot", T0) == []
