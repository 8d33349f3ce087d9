"""Rate limits on every kind of store: a limited store lets ``rate`` runs start per
window, holds the next back visibly (``rate_limited``) until the window allows it,
never counts a started run again, and keeps per-key rates apart."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import stemd
from stemd._codec import codec_for
from stemd._engine.limits import RATE_LIMITED_CODE, LimitedStore
from stemd._store.base import RetryLater
from tests.unit.store.test_contract import LEASE, T0, at, enc, record

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio


def _limited(store: Store, limits: stemd.Limits) -> LimitedStore:
    return LimitedStore(store, {"wf": limits}, {}, codec_for("json"), patience=0)


async def test_a_rate_holds_back_the_starts_over_it_until_the_window_allows(
    store: Store,
) -> None:
    """Two starts per 10 s: a third start in the window is held back as rate_limited
    (suspended, to try again within the window) and starts once the first two are 10 s old."""
    limited = _limited(store, stemd.Limits(rate=2, per=10.0))
    for run_id in ("a", "b", "c"):
        await store.create_run(record(run_id))
    assert await limited.claim("a", "w1", T0, LEASE) is not None
    assert await limited.claim("b", "w1", at(1), LEASE) is not None
    assert await limited.claim("c", "w1", at(2), LEASE) is None
    held = await store.get_run("c")
    assert held is not None
    assert held.status is stemd.RunStatus.SUSPENDED
    assert held.error is not None
    assert held.error.code == RATE_LIMITED_CODE
    assert held.resume_at is not None
    assert at(2) < held.resume_at <= at(7)
    await store.create_run(record("d", now=at(9)))
    assert await limited.claim("d", "w1", at(9), LEASE) is None
    await store.fire_timer("c", at(10), b"")
    assert await limited.claim("c", "w1", at(10), LEASE) is not None
    assert limited.rate_limited["wf"] == 2


async def test_a_started_run_is_not_counted_again(store: Store) -> None:
    """A run that started and waits to go on is claimed again with the rate used up by
    others: its later slices are not starts."""
    limited = _limited(store, stemd.Limits(rate=1, per=10.0))
    for run_id in ("a", "b"):
        await store.create_run(record(run_id))
    claim = await limited.claim("a", "w1", T0, LEASE)
    assert claim is not None
    wait = RetryLater(
        step="s", failures=1, resume_at=at(1), error=stemd.ErrorInfo(type="Boom", message="")
    )
    await limited.commit("a", claim.token, wait, at(0.5))
    assert await limited.claim("b", "w1", at(1), LEASE) is None
    await store.fire_timer("a", at(1), b"")
    assert await limited.claim("a", "w1", at(1), LEASE) is not None


async def test_a_key_rate_counts_each_key_apart(store: Store) -> None:
    """One start per key per 10 s: a second run of key x is held back while a run of
    key y starts."""
    limits = stemd.Limits(key=lambda p: p["customer"], key_rate=1, per=10.0)
    limited = _limited(store, limits)
    for run_id, customer in (("x1", "x"), ("x2", "x"), ("y1", "y")):
        rec = record(run_id)
        rec.params = enc({"customer": customer})
        await store.create_run(rec)
    assert await limited.claim("x1", "w1", T0, LEASE) is not None
    assert await limited.claim("x2", "w1", T0, LEASE) is None
    assert await limited.claim("y1", "w1", T0, LEASE) is not None
    held = await store.get_run("x2")
    assert held is not None
    assert held.error is not None
    assert "of wf:x start per 10 s" in held.error.message
