"""Flow control: concurrency limits global across the daemons sharing a store.

:class:`LimitedStore` wraps the store of an App whose workflows declare
:class:`~stemd.Limits` (or whose config sets ``[limits]``). A claim of a limited run first
holds a slot of each limit that applies (the workflow's, its key's) in the store
(:class:`~stemd._store.capabilities.Slots`: one transaction on SQLite, a compare-and-set
on JetStream, so no number of daemons holds more than the limit); the slots go with the
slice's lease (renewed with it, freed by its commit, and freed by expiry when its daemon
dies: the next claim after takeover finds them free). A run that finds no slot free waits a
moment for one (its worker takes a slot freed in this process at once), then is held
back: claimed and committed as a wait to try again shortly, with an error of
code ``"waiting_for_slot"`` naming the limit, which ``get`` and ``list`` show. Runs
waiting for a limit's slots take them in the order of a line kept in the store, by
priority (:mod:`stemd._engine.priorities`).

A rate limit is kept with the same slots: a start takes a slot of the rate's scope (the
workflow's, its key's) held by the run until ``per`` seconds later and never freed, so no
more than ``rate`` are held in any window. Only a run not started yet is counted (it has
never been claimed, or only to be held back by the rate); one over the rate is held back
at once with an error of code ``"rate_limited"`` and tries again within the window. Runs of
workflows without limits go straight to the store, and an App with no limits at all has
no wrapper.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from stemd._authoring.limits import Limits
from stemd._engine.observer import Observers, RunChanged
from stemd._engine.priorities import in_turn, join, leave, place_of, validate_priority
from stemd._errors import StemError
from stemd._model import ErrorInfo, Retry
from stemd._store.base import RetryLater
from stemd._store.capabilities import Slots

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from stemd._codec import Codec
    from stemd._options import LimitSettings
    from stemd._store.base import Claim, CommitResult, Outcome, RunRecord, Store

__all__ = [
    "RATE_LIMITED_CODE",
    "SLOT_WAIT",
    "WAITING_FOR_SLOT_CODE",
    "LimitedStore",
    "effective_limits",
    "is_limited",
    "observers_of",
    "rate_wait",
    "validate_priority",
]

log = structlog.get_logger("stemd.limits")

#: ErrorInfo.code of a run held back by a concurrency limit.
WAITING_FOR_SLOT_CODE = "waiting_for_slot"
#: How long a held-back run waits before it tries again (its n-th time in a row).
SLOT_WAIT = Retry(backoff=0.05, max_backoff=0.5, jitter=True)
#: ErrorInfo.code of a run held back by a rate limit.
RATE_LIMITED_CODE = "rate_limited"
_NUMBERS = ("concurrency", "key_concurrency", "rate", "key_rate", "per", "dedup_window")


def rate_wait(per: float) -> Retry:
    """How long a run held back by a rate of window ``per`` waits before it tries again:
    a jittered share of the window (at most 5 s), growing with its tries in a row."""
    most = min(max(per, 0.05), 5.0)
    return Retry(backoff=most / 8, max_backoff=most, jitter=True)


def effective_limits(
    workflows: Mapping[str, Any], overrides: Mapping[str, LimitSettings]
) -> dict[str, Limits]:
    """The limits of each workflow: declared on it (``limits=``), with the numbers the
    config sets for it (``[limits."NAME"]``) in their place.

    Raises:
        StemError: an override names a key limit for a workflow that declares no key, or
            a number that is not a positive integer.
    """
    out: dict[str, Limits] = {}
    for name, workflow in workflows.items():
        declared: Limits = getattr(workflow, "limits", None) or Limits()
        override = overrides.get(name)
        numbers = {n: (override and getattr(override, n)) or getattr(declared, n) for n in _NUMBERS}
        try:
            merged = Limits(key=declared.key, **numbers)
        except (TypeError, ValueError) as exc:
            raise StemError(f"limits of workflow {name!r}: {exc}") from None
        if merged.limited:
            out[name] = merged
    return out


def is_limited(store: Store, workflow: str) -> bool:
    """Whether the runs of ``workflow`` on ``store`` are held to limits."""
    return isinstance(store, LimitedStore) and workflow in store.limits


def observers_of(store: Store) -> Observers:
    """The observers an engine on ``store`` gets: the limited store's (it tells the timer
    about the runs it holds back), or new ones."""
    return store.observers if isinstance(store, LimitedStore) else Observers()


class LimitedStore:
    """A :class:`~stemd._store.base.Store` that holds back the runs of limited workflows
    (see the module's docstring); every other call goes to ``inner`` as it is.

    Args:
        inner: the store (it must keep slots).
        limits: the limits of each limited workflow, by name.
        codecs: the codecs of particular workflows' values, by name, and ``codec`` the
            others' (a key is computed from a run's decoded params).
        patience: seconds a claim waits for a slot (taking one freed here at once) before
            the run is held back.
        slot_ttl: seconds a slot stays held without a renewal (``None``: the claim's
            lease). The process renews its slots with its session (:meth:`refresh_slots`),
            so the slots of a process that died are free again this long after.
    """

    def __init__(
        self,
        inner: Store,
        limits: Mapping[str, Limits],
        codecs: Mapping[str, Codec],
        codec: Codec,
        *,
        patience: float = 1.0,
        slot_ttl: float | None = None,
    ) -> None:
        if not isinstance(inner, Slots):
            raise StemError(f"the store {type(inner).__name__} keeps no slots: no limits there")
        self.inner = inner
        self.slots: Slots = inner
        self.limits = dict(limits)
        self.codecs = dict(codecs)
        self.codec = codec
        self.observers = Observers()
        self.patience = patience
        self.slot_ttl = slot_ttl
        self._freed = anyio.Event()
        # Runs held back by this process so far, and slots taken, by workflow (metrics).
        self.held_back: collections.Counter[str] = collections.Counter()
        self.slots_taken: collections.Counter[str] = collections.Counter()
        # Starts held back by a rate limit here, by workflow (metrics).
        self.rate_limited: collections.Counter[str] = collections.Counter()
        # The slots each slice holds: (run id, token) → (holder, [(scope, limit)]).
        self._held: dict[tuple[str, int], tuple[str, list[tuple[str, int]]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _scopes(
        self, rec: RunRecord, limits: Limits
    ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """The concurrency scopes of a run, and its rate scopes: (scope, limit) each."""
        scopes: list[tuple[str, int]] = []
        rates: list[tuple[str, int]] = []
        if limits.concurrency is not None:
            scopes.append((f"wf:{rec.workflow}", limits.concurrency))
        if limits.rate is not None:
            rates.append((f"rate:{rec.workflow}", limits.rate))
        if limits.key is not None and (limits.key_concurrency or limits.key_rate):
            try:
                codec = self.codecs.get(rec.workflow, self.codec)
                key = limits.key(codec.decode(rec.params))
            except Exception as exc:
                log.warning("limit key failed; no key limit", run_id=rec.run_id, error=repr(exc))
            else:
                if limits.key_concurrency is not None:
                    scopes.append((f"key:{rec.workflow}:{key}", limits.key_concurrency))
                if limits.key_rate is not None:
                    rates.append((f"rate:{rec.workflow}:{key}", limits.key_rate))
        return scopes, rates

    async def _admit(
        self, rec: RunRecord, limits: Limits, rates: list[tuple[str, int]], now: datetime
    ) -> tuple[str, int] | None:
        """Count the start of a run not started yet against its rates (a slot of each,
        held by the run for ``per`` seconds: taken again by it, nothing more is counted);
        ``None``, or the rate that is full."""
        if not rates:
            return None
        error = rec.error
        if rec.attempts and (error is None or error.code != RATE_LIMITED_CODE):
            return None  # started already
        return await self._acquire(f"run:{rec.run_id}", rates, now, limits.per)

    async def claim(self, run_id: str, owner: str, now: datetime, lease: float) -> Claim | None:
        rec = await self.inner.get_run(run_id)
        limits = self.limits.get(rec.workflow) if rec is not None else None
        # The read may be older than the store (a reader's snapshot): whether the run is
        # claimable is left to the claim itself, made with the slots held. Only an ended
        # run (it stays ended) needs none.
        if rec is None or limits is None or rec.status.is_terminal:
            return await self.inner.claim(run_id, owner, now, lease)
        holder = f"{run_id}:{owner}:{secrets.token_hex(4)}"
        held, rates = self._scopes(rec, limits)
        over = await self._admit(rec, limits, rates, now)
        if over is not None:
            await self._hold_back(rec, owner, now, lease, _rate_error(*over, limits.per))
            return None
        place = place_of(rec)
        # A run held back for a slot keeps its place in line until it has one.
        queued = rec.error is not None and rec.error.code == WAITING_FOR_SLOT_CODE
        started = time.monotonic()
        while True:
            full = await in_turn(self.slots, place, held, now)
            if full is None:
                full = await self._acquire(holder, held, now, lease)
            if full is None:
                break
            await join(self.slots, place, [full], now)
            queued = True
            waited = time.monotonic() - started
            if waited >= self.patience:
                await self._hold_back(rec, owner, now, lease, _slot_error(*full))
                return None
            # A slot freed by this process is taken at once; one freed by another process
            # is found by the next try.
            with anyio.move_on_after(min(self.patience - waited, 0.1)):
                await self._freed.wait()
            now += timedelta(seconds=time.monotonic() - started - waited)
        try:
            claim = await self.inner.claim(run_id, owner, now, lease)
        except BaseException:
            # The claim may have been written all the same (an answer lost): the engine
            # gives such a run back, by a commit that frees no slot, so free them now.
            with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                await self._release(holder, held)
            raise
        if claim is None:
            await self._release(holder, held)  # not claimable: it keeps its place
            return None
        self._held[(run_id, claim.token)] = (holder, held)
        self.slots_taken[rec.workflow] += 1
        if queued:
            # The claim is written: nothing may undo it now. A place not given up lapses
            # by itself (LINE_HOLD), holding back no one for long.
            try:
                await leave(self.slots, place, held)
            except Exception as exc:
                log.warning("place in line not given up", run_id=run_id, error=repr(exc))
        return claim

    async def renew_lease(self, run_id: str, token: int, now: datetime, lease: float) -> None:
        await self.inner.renew_lease(run_id, token, now, lease)
        found = self._held.get((run_id, token))
        if found is not None:
            holder, held = found
            expires = now + timedelta(seconds=self._ttl(lease))
            for scope, limit in held:
                await self.slots.acquire_slot(scope, holder, limit, now, expires)

    def _ttl(self, lease: float) -> float:
        return self.slot_ttl if self.slot_ttl is not None else lease

    async def refresh_slots(self, now: datetime) -> None:
        """Renew every slot this process holds for ``slot_ttl`` more seconds (its
        session's upkeep calls it, a few times per ``slot_ttl``)."""
        if self.slot_ttl is None:
            return
        expires = now + timedelta(seconds=self.slot_ttl)
        for holder, held in list(self._held.values()):
            for scope, limit in held:
                await self.slots.acquire_slot(scope, holder, limit, now, expires)

    async def commit(
        self, run_id: str, token: int, outcome: Outcome, now: datetime
    ) -> CommitResult:
        try:
            return await self.inner.commit(run_id, token, outcome, now)
        finally:
            found = self._held.pop((run_id, token), None)
            if found is not None:
                await self._release(*found)

    async def _acquire(
        self, holder: str, scopes: list[tuple[str, int]], now: datetime, lease: float
    ) -> tuple[str, int] | None:
        """Hold a slot of each scope for ``holder``, or none: the scope that is full."""
        expires = now + timedelta(seconds=self._ttl(lease))
        held: list[tuple[str, int]] = []
        # A rate's slots are held for their window; a concurrency slot for the lease.
        try:
            for scope, limit in scopes:
                if not await self.slots.acquire_slot(scope, holder, limit, now, expires):
                    await self._release(holder, held)
                    return scope, limit
                held.append((scope, limit))
        except BaseException:
            # Those taken would keep others out until they expired.
            with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                await self._release(holder, held)
            raise
        return None

    async def _release(self, holder: str, held: list[tuple[str, int]]) -> None:
        for scope, _ in held:
            await self.slots.release_slot(scope, holder)
        if held:
            self._freed.set()
            self._freed = anyio.Event()

    async def _hold_back(
        self, rec: RunRecord, owner: str, now: datetime, lease: float, error: ErrorInfo
    ) -> None:
        """Make the run wait, visibly, to try again shortly (its step retries kept)."""
        claim = await self.inner.claim(rec.run_id, owner, now, lease)
        if claim is None:
            return  # taken meanwhile
        last = claim.record.error
        tries = (last.attempts or 0) + 1 if last and last.code == error.code else 1
        held = msgspec.structs.replace(error, attempts=tries)
        if error.code == RATE_LIMITED_CODE:
            per = self.limits[rec.workflow].per
            delay = rate_wait(per).delay(min(tries, 4))
            self.rate_limited[rec.workflow] += 1
        else:
            delay = SLOT_WAIT.delay(min(tries, 8))
            self.held_back[rec.workflow] += 1
        wait = RetryLater(
            step=claim.record.attempt_step,
            failures=claim.record.step_failures,
            resume_at=now + timedelta(seconds=delay),
            error=held,
        )
        done = await self.inner.commit(rec.run_id, claim.token, wait, now)
        new = done.record
        event = RunChanged(
            run_id=new.run_id, workflow=new.workflow, status=new.status, timer_at=new.timer_at
        )
        for hook in self.observers.run_changed:
            hook(event)


def _slot_error(scope: str, limit: int) -> ErrorInfo:
    what = scope.partition(":")[2]
    return ErrorInfo(
        type="WaitingForSlot",
        message=f"waiting for a slot: {limit} run(s) of {what} execute at once",
        code=WAITING_FOR_SLOT_CODE,
    )


def _rate_error(scope: str, limit: int, per: float) -> ErrorInfo:
    what = scope.partition(":")[2]
    return ErrorInfo(
        type="RateLimited",
        message=f"rate limited: {limit} run(s) of {what} start per {per:g} s",
        code=RATE_LIMITED_CODE,
    )
