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
code ``"waiting_for_slot"`` naming the limit, which ``get`` and ``list`` show. Runs of
workflows without limits go straight to the store, and an App with no limits at all has
no wrapper.
"""

from __future__ import annotations

import collections
import secrets
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from stemd._authoring.limits import Limits
from stemd._engine.observer import Observers, RunChanged
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

__all__ = ["SLOT_WAIT", "WAITING_FOR_SLOT_CODE", "LimitedStore", "effective_limits", "observers_of"]

log = structlog.get_logger("stemd.limits")

#: ErrorInfo.code of a run held back by a concurrency limit.
WAITING_FOR_SLOT_CODE = "waiting_for_slot"
#: How long a held-back run waits before it tries again (its n-th time in a row).
SLOT_WAIT = Retry(backoff=0.05, max_backoff=0.5, jitter=True)


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
        try:
            merged = Limits(
                concurrency=(override and override.concurrency) or declared.concurrency,
                key=declared.key,
                key_concurrency=(override and override.key_concurrency) or declared.key_concurrency,
            )
        except (TypeError, ValueError) as exc:
            raise StemError(f"limits of workflow {name!r}: {exc}") from None
        if merged.limited:
            out[name] = merged
    return out


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
        # The slots each slice holds: (run id, token) → (holder, [(scope, limit)]).
        self._held: dict[tuple[str, int], tuple[str, list[tuple[str, int]]]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _scopes(self, rec: RunRecord, limits: Limits) -> list[tuple[str, int]]:
        scopes: list[tuple[str, int]] = []
        if limits.concurrency is not None:
            scopes.append((f"wf:{rec.workflow}", limits.concurrency))
        if limits.key is not None and limits.key_concurrency is not None:
            try:
                codec = self.codecs.get(rec.workflow, self.codec)
                key = limits.key(codec.decode(rec.params))
            except Exception as exc:
                log.warning("limit key failed; no key limit", run_id=rec.run_id, error=repr(exc))
            else:
                scopes.append((f"key:{rec.workflow}:{key}", limits.key_concurrency))
        return scopes

    async def claim(self, run_id: str, owner: str, now: datetime, lease: float) -> Claim | None:
        rec = await self.inner.get_run(run_id)
        limits = self.limits.get(rec.workflow) if rec is not None else None
        # The read may be older than the store (a reader's snapshot): whether the run is
        # claimable is left to the claim itself, made with the slots held. Only an ended
        # run (it stays ended) needs none.
        if rec is None or limits is None or rec.status.is_terminal:
            return await self.inner.claim(run_id, owner, now, lease)
        holder = f"{run_id}:{owner}:{secrets.token_hex(4)}"
        held = self._scopes(rec, limits)
        started = time.monotonic()
        while True:
            full = await self._acquire(holder, held, now, lease)
            if full is None:
                break
            waited = time.monotonic() - started
            if waited >= self.patience:
                await self._hold_back(rec, owner, now, lease, *full)
                return None
            # A slot freed by this process is taken at once; one freed by another process
            # is found by the next try.
            with anyio.move_on_after(min(self.patience - waited, 0.1)):
                await self._freed.wait()
            now += timedelta(seconds=time.monotonic() - started - waited)
        claim = await self.inner.claim(run_id, owner, now, lease)
        if claim is None:
            await self._release(holder, held)
            return None
        self._held[(run_id, claim.token)] = (holder, held)
        self.slots_taken[rec.workflow] += 1
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
        for scope, limit in scopes:
            if not await self.slots.acquire_slot(scope, holder, limit, now, expires):
                await self._release(holder, held)
                return scope, limit
            held.append((scope, limit))
        return None

    async def _release(self, holder: str, held: list[tuple[str, int]]) -> None:
        for scope, _ in held:
            await self.slots.release_slot(scope, holder)
        if held:
            self._freed.set()
            self._freed = anyio.Event()

    async def _hold_back(
        self, rec: RunRecord, owner: str, now: datetime, lease: float, scope: str, limit: int
    ) -> None:
        """Make the run wait, visibly, to try again shortly (its step retries kept)."""
        claim = await self.inner.claim(rec.run_id, owner, now, lease)
        if claim is None:
            return  # taken meanwhile
        error = claim.record.error
        tries = (error.attempts or 0) + 1 if error and error.code == WAITING_FOR_SLOT_CODE else 1
        what = scope.partition(":")[2]
        held = ErrorInfo(
            type="WaitingForSlot",
            message=f"waiting for a slot: {limit} run(s) of {what} execute at once",
            attempts=tries,
            code=WAITING_FOR_SLOT_CODE,
        )
        wait = RetryLater(
            step=claim.record.attempt_step,
            failures=claim.record.step_failures,
            resume_at=now + timedelta(seconds=SLOT_WAIT.delay(min(tries, 8))),
            error=held,
        )
        done = await self.inner.commit(rec.run_id, claim.token, wait, now)
        self.held_back[rec.workflow] += 1
        new = done.record
        event = RunChanged(
            run_id=new.run_id, workflow=new.workflow, status=new.status, timer_at=new.timer_at
        )
        for hook in self.observers.run_changed:
            hook(event)
