"""Flow control in one process: a workflow's concurrency limit and a per-key limit hold
runs back (visibly, with the error code waiting_for_slot) and every run still completes;
limits from the config replace declared ones."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest
from prometheus_client import generate_latest

import stemd
from stemd._codec import codec_for
from stemd._engine.limits import (
    RATE_LIMITED_CODE,
    WAITING_FOR_SLOT_CODE,
    LimitedStore,
    effective_limits,
)
from stemd._errors import StoreError
from stemd._observe import install_metrics, refresh_metrics
from stemd._options import LimitSettings
from stemd._store.base import Complete
from stemd._store.memory import MemoryStore
from tests.helpers import open_app, wait_until
from tests.unit.store.test_contract import LEASE, T0, record

if TYPE_CHECKING:
    from pathlib import Path

    from stemd._store.base import RunRecord

pytestmark = pytest.mark.anyio

RUNNING: dict[str, int] = {"now": 0, "max": 0}
BY_KEY: dict[str, int] = {}
KEY_MAX: dict[str, int] = {}
GATE: dict[str, anyio.Event] = {}


async def _busy(key: str) -> str:
    RUNNING["now"] += 1
    RUNNING["max"] = max(RUNNING["max"], RUNNING["now"])
    BY_KEY[key] = BY_KEY.get(key, 0) + 1
    KEY_MAX[key] = max(KEY_MAX.get(key, 0), BY_KEY[key])
    try:
        await GATE["open"].wait()
        await anyio.sleep(0.01)
    finally:
        RUNNING["now"] -= 1
        BY_KEY[key] -= 1
    return key


@stemd.script(
    "limits.busy",
    limits=stemd.Limits(concurrency=2, key=lambda p: p["customer"], key_concurrency=1),
)
async def busy(ctx: stemd.ScriptContext, params: dict[str, Any]) -> str:
    """One step that runs until the test opens the gate."""
    return await ctx.step("work", _busy, params["customer"])


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store the App uses."""
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/l.db"


async def test_limits_hold_runs_back_visibly_and_all_complete(store_url: str) -> None:
    """With concurrency 2 and one run per customer at once, 6 runs of 3 customers never
    run more than 2 at once nor 2 of one customer; the held ones show waiting_for_slot;
    all complete."""
    RUNNING.update(now=0, max=0)
    BY_KEY.clear()
    KEY_MAX.clear()
    GATE["open"] = anyio.Event()
    options = stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.05))
    async with open_app(busy, store=store_url, options=options) as app:
        ids = [await app.start_workflow(busy, {"customer": f"c{i % 3}"}) for i in range(6)]

        async def some_held() -> bool:
            states = [await app.get_run(r) for r in ids]
            return any(
                s is not None and s.error is not None and s.error.code == WAITING_FOR_SLOT_CODE
                for s in states
            )

        await wait_until(some_held, what="a run held back")
        assert RUNNING["now"] <= 2
        GATE["open"].set()
        for run_id in ids:
            assert (await app.wait_for_completion(run_id, timeout=20)).is_completed
        registry = install_metrics(app)
        await refresh_metrics(registry)
        text = generate_latest(registry).decode()
    assert 'stemd_runs_held_back{workflow="limits.busy"}' in text
    assert 'stemd_slots_taken{workflow="limits.busy"} 6.0' in text
    assert RUNNING["max"] == 2
    assert max(KEY_MAX.values()) == 1


async def test_the_runs_waiting_for_a_slot_now_are_a_gauge(store_url: str) -> None:
    """stemd_runs_waiting_for_slot counts the runs held back now (4 of 6, with 2 slots),
    read from the store, and falls to 0 once they have run."""
    RUNNING.update(now=0, max=0)
    BY_KEY.clear()
    KEY_MAX.clear()
    GATE["open"] = anyio.Event()
    options = stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.05))
    async with open_app(busy, store=store_url, options=options) as app:
        registry = install_metrics(app, paused_interval=0)
        line = 'stemd_runs_waiting_for_slot{workflow="limits.busy"}'
        await refresh_metrics(registry)
        assert f"{line} 0.0" in generate_latest(registry).decode()
        ids = [await app.start_workflow(busy, {"customer": f"c{i}"}) for i in range(6)]

        async def waiting(count: int) -> bool:
            await refresh_metrics(registry)
            return f"{line} {count:.1f}" in generate_latest(registry).decode()

        await wait_until(waiting, 4, what="4 runs waiting for a slot")
        GATE["open"].set()
        for run_id in ids:
            assert (await app.wait_for_completion(run_id, timeout=20)).is_completed
        assert await waiting(0)


STARTS: list[float] = []


@stemd.script("limits.rated", limits=stemd.Limits(rate=3, per=0.5))
async def rated(ctx: stemd.ScriptContext, params: dict[str, Any]) -> int:
    """One step that notes when it started."""

    async def note() -> int:
        STARTS.append(time.monotonic())
        return len(STARTS)

    return await ctx.step("note", note)


async def test_a_rate_limit_spreads_starts_visibly_and_all_complete(store_url: str) -> None:
    """Three starts per 0.5 s: 9 runs all complete, no 4 of them start within less than
    the window, a held run shows rate_limited, and the metric counts the held starts."""
    STARTS.clear()
    options = stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.05))
    async with open_app(rated, store=store_url, options=options) as app:
        ids = [await app.start_workflow(rated, {}) for _ in range(9)]
        seen: set[str | None] = set()
        for run_id in ids:
            state = await app.get_run(run_id)
            if state is not None and state.error is not None:
                seen.add(state.error.code)

        async def one_held() -> bool:
            states = [await app.get_run(r) for r in ids]
            codes = {s.error.code for s in states if s is not None and s.error is not None}
            seen.update(codes)
            return RATE_LIMITED_CODE in seen

        await wait_until(one_held, what="a run held back by the rate")
        for run_id in ids:
            assert (await app.wait_for_completion(run_id, timeout=20)).is_completed
        text = generate_latest(install_metrics(app)).decode()
    assert 'stemd_runs_rate_limited{workflow="limits.rated"}' in text
    starts = sorted(STARTS)
    assert len(starts) == 9
    for i in range(len(starts) - 3):
        assert starts[i + 3] - starts[i] > 0.4, starts


def test_the_config_replaces_the_declared_numbers() -> None:
    """[limits."name"] numbers replace the declared ones; the key stays the workflow's."""
    limits = effective_limits({"limits.busy": busy}, {"limits.busy": LimitSettings(concurrency=5)})[
        "limits.busy"
    ]
    assert limits.concurrency == 5
    assert limits.key_concurrency == 1
    assert limits.key is not None
    rated_now = effective_limits(
        {"limits.rated": rated}, {"limits.rated": LimitSettings(rate=7, per=2.0)}
    )["limits.rated"]
    assert (rated_now.rate, rated_now.per) == (7, 2.0)


def test_a_key_limit_without_a_key_is_refused() -> None:
    """A key limit needs a key function: in code or from the config, a clear error."""
    with pytest.raises(ValueError, match="key"):
        stemd.Limits(key_concurrency=1)
    with pytest.raises(ValueError, match="key"):
        stemd.Limits(key_rate=1)
    with pytest.raises(ValueError, match="positive"):
        stemd.Limits(concurrency=0)
    with pytest.raises(ValueError, match="positive"):
        stemd.Limits(rate=-1)
    with pytest.raises(ValueError, match="per"):
        stemd.Limits(rate=1, per=0)
    plain = stemd.Flow("limits.plain")
    with pytest.raises(stemd.StemError, match="key"):
        effective_limits(
            {"limits.plain": plain}, {"limits.plain": LimitSettings(key_concurrency=1)}
        )


class _StaleReads(MemoryStore):
    """A memory store whose reads lag: every run reads as suspended until much later (as a
    reader's snapshot from before a wake-up)."""

    async def get_run(self, run_id: str) -> RunRecord | None:
        rec = await super().get_run(run_id)
        if rec is None:
            return None
        later = rec.created_at + timedelta(hours=1)
        return msgspec.structs.replace(rec, status=stemd.RunStatus.SUSPENDED, resume_at=later)


async def test_a_stale_read_never_lets_a_claim_skip_its_slot() -> None:
    """A run read (stale) as not claimable still takes its slot when its claim succeeds:
    with a limit of 1, a second run is held back, not run alongside."""
    inner = _StaleReads()
    limited = LimitedStore(
        inner, {"limits.stale": stemd.Limits(concurrency=1)}, {}, codec_for("json"), patience=0
    )
    for run_id in ("x", "y"):
        await inner.create_run(record(run_id, workflow="limits.stale"))
    assert await limited.claim("x", "w1", T0, LEASE) is not None
    assert await limited.claim("y", "w1", T0, LEASE) is None
    held = await MemoryStore.get_run(inner, "y")
    assert held is not None
    assert held.error is not None
    assert held.error.code == WAITING_FOR_SLOT_CODE


class _LineStuck(MemoryStore):
    """A memory store where leaving a limit's line fails (its key's writes conflicting
    beyond the store's patience, as on a hot JetStream key)."""

    async def release_slot(self, scope: str, holder: str) -> None:
        if scope.startswith("line:"):
            raise StoreError(f"slots of {scope}: gave up after 50 conflicts")
        await super().release_slot(scope, holder)


async def test_a_claim_stands_when_its_place_in_line_cannot_be_given_up() -> None:
    """A run held back for a slot, then claimed, keeps its claim and its slot when leaving
    the line fails (the place lapses by itself): the claim is not lost to an error raised
    after it was written, which left the run claimed under a live owner with nobody's
    slice running it (until the claim's lease ran out)."""
    inner = _LineStuck()
    limited = LimitedStore(
        inner, {"limits.line": stemd.Limits(concurrency=1)}, {}, codec_for("json"), patience=0
    )
    for run_id in ("x", "y"):
        await inner.create_run(record(run_id, workflow="limits.line"))
    x = await limited.claim("x", "w1", T0, LEASE)
    assert x is not None
    assert await limited.claim("y", "w1", T0, LEASE) is None  # held back: in line
    await limited.commit("x", x.token, Complete(result=b"1"), T0)
    later = T0 + timedelta(seconds=5)
    assert (await inner.fire_timer("y", later, b"null")).action == "woken"
    y = await limited.claim("y", "w1", later, LEASE)
    assert y is not None
    assert await inner.slot_holders("wf:limits.line", later) != []
    await limited.commit("y", y.token, Complete(result=b"2"), later)
    assert await inner.slot_holders("wf:limits.line", later) == []  # freed by its commit


class _KeySlotsFail(MemoryStore):
    """A memory store whose key scopes' slots cannot be taken (their writes failing)."""

    async def acquire_slot(
        self, scope: str, holder: str, limit: int, now: Any, expires_at: Any
    ) -> bool:
        if scope.startswith("key:"):
            raise StoreError(f"slots of {scope}: gave up after 50 conflicts")
        return await super().acquire_slot(scope, holder, limit, now, expires_at)


async def test_a_claim_that_fails_between_two_slots_keeps_neither() -> None:
    """A claim that took the workflow's slot and then failed on its key's gives the first
    back: it would keep every other run out until it expired."""
    inner = _KeySlotsFail()
    limits = stemd.Limits(concurrency=1, key=lambda p: p["n"], key_concurrency=1)
    limited = LimitedStore(inner, {"limits.two": limits}, {}, codec_for("json"), patience=0)
    await inner.create_run(record("x", workflow="limits.two"))
    with pytest.raises(StoreError):
        await limited.claim("x", "w1", T0, LEASE)
    assert await inner.slot_holders("wf:limits.two", T0) == []
