"""Priorities among runs waiting for a slot, on every kind of store: when a slot frees, a
waiting run of higher priority takes it before a lower one; runs of one priority do not
hold each other back; a low-priority run that waited long enough goes before a later high one
(aging); a waiting run that stopped trying gives up its place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

import stemd
from stemd._codec import codec_for
from stemd._engine.limits import WAITING_FOR_SLOT_CODE, LimitedStore
from stemd._engine.priorities import LINE_HOLD, PRIORITY_STEP
from stemd._store.base import Complete
from tests.unit.store.test_contract import LEASE, T0, at, record

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._store.base import Store

pytestmark = pytest.mark.anyio


async def _setup(store: Store, runs: dict[str, tuple[float, int]]) -> LimitedStore:
    """A limit of 1, held by run "x"; ``runs`` (id → (created at, priority)) held back."""
    limited = LimitedStore(
        store, {"wf": stemd.Limits(concurrency=1)}, {}, codec_for("json"), patience=0
    )
    await store.create_run(record("x"))
    assert await limited.claim("x", "w1", T0, LEASE) is not None
    for run_id, (created, priority) in runs.items():
        rec = msgspec.structs.replace(record(run_id, now=at(created)), priority=priority)
        await store.create_run(rec)
        assert await limited.claim(run_id, "w1", at(created), LEASE) is None
        held = await store.get_run(run_id)
        assert held is not None
        assert held.error is not None
        assert held.error.code == WAITING_FOR_SLOT_CODE
    return limited


async def _free(store: Store, limited: LimitedStore, now: datetime) -> None:
    """Run "x" ends, giving its slot back; the held runs become claimable."""
    rec = await store.get_run("x")
    assert rec is not None
    await limited.commit("x", rec.token, Complete(result=b"1"), now)
    for run_id in ("low", "high", "first", "second"):
        if await store.get_run(run_id) is not None:
            await store.fire_timer(run_id, now, b"")


async def test_a_higher_priority_takes_the_freed_slot_first(store: Store) -> None:
    """Low (priority 0) waits first, high (priority 5) a second later: once the slot is
    free, low is not let in while high waits; high is."""
    limited = await _setup(store, {"low": (1, 0), "high": (2, 5)})
    await _free(store, limited, at(2.5))
    assert await limited.claim("low", "w1", at(2.5), LEASE) is None
    assert await limited.claim("high", "w1", at(2.5), LEASE) is not None


async def test_equal_priorities_do_not_wait_for_each_other(store: Store) -> None:
    """Two runs of one priority: whichever tries first when the slot frees takes it (a
    strict order would leave the slot free until the first one tries again)."""
    limited = await _setup(store, {"first": (1, 3), "second": (2, 3)})
    await _free(store, limited, at(2.5))
    assert await limited.claim("second", "w1", at(2.5), LEASE) is not None
    assert await limited.claim("first", "w1", at(2.5), LEASE) is None


async def test_a_long_wait_outranks_a_later_higher_priority(store: Store) -> None:
    """A run of priority 1 that arrived more than PRIORITY_STEP seconds after a priority 0
    one goes after it (aging), provided the earlier one kept trying."""
    later = 1 + PRIORITY_STEP + 1
    limited = await _setup(store, {"low": (1, 0)})
    for t in range(2, int(later) + 1, 2):  # low keeps trying, keeping its place
        await store.fire_timer("low", at(t), b"")
        assert await limited.claim("low", "w1", at(t), LEASE) is None
    rec = msgspec.structs.replace(record("high", now=at(later)), priority=1)
    await store.create_run(rec)
    assert await limited.claim("high", "w1", at(later), LEASE) is None
    await _free(store, limited, at(later + 0.5))
    assert await limited.claim("high", "w1", at(later + 0.5), LEASE) is None
    assert await limited.claim("low", "w1", at(later + 0.5), LEASE) is not None


async def test_a_run_that_stopped_waiting_gives_up_its_place(store: Store) -> None:
    """A high-priority run that does not try again within LINE_HOLD seconds (cancelled,
    paused, its daemon gone) no longer keeps a lower one from a free slot."""
    limited = await _setup(store, {"low": (1, 0), "high": (2, 5)})
    later = 2 + LINE_HOLD + 0.5
    await _free(store, limited, at(later))
    assert await limited.claim("low", "w1", at(later), LEASE) is not None
