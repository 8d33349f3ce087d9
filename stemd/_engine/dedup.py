"""Deduplication of starts: a start with a ``dedup_key`` that finds a live run of the same
workflow started with the same key within the window returns that run instead of
starting another, across every process sharing the store.

The key is a slot of limit 1 in the store (:class:`~stemd._store.capabilities.Slots`: one
transaction on SQLite, a compare-and-set on JetStream), held by the id of the run it
started until the window ends. Taking it decides which run a key starts; creating that
run is idempotent on its id, so a start that finds the key held by a run not created yet
(its starter is about to, or died before it could) creates that very run, and exactly one
start of the key creates it. A key held by a run that has ended is given up and taken
again: only a live run deduplicates.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from stemd._errors import StemError, StoreError
from stemd._store.capabilities import Slots

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from stemd._options import LimitSettings
    from stemd._store.base import RunRecord, Store

__all__ = ["DEFAULT_DEDUP_WINDOW", "create_once", "dedup_window", "validate_dedup_key"]

#: The window of a workflow that declares none, in seconds.
DEFAULT_DEDUP_WINDOW = 3600.0
_TRIES = 16
_MAX_KEY = 512


def validate_dedup_key(key: Any) -> str:
    """``key``, a non-empty string of at most 512 characters.

    Raises:
        StemError: it is not.
    """
    if not isinstance(key, str) or not key or len(key) > _MAX_KEY:
        raise StemError(f"dedup_key must be a non-empty string of at most {_MAX_KEY} characters")
    return key


def dedup_window(name: str, definition: Any, overrides: Mapping[str, LimitSettings]) -> float:
    """Seconds a start's ``dedup_key`` of workflow ``name`` holds: the config's, else the
    declared one (``Limits(dedup_window=…)``), else :data:`DEFAULT_DEDUP_WINDOW`."""
    override = overrides.get(name)
    if override is not None and override.dedup_window is not None:
        return override.dedup_window
    limits = getattr(definition, "limits", None)
    declared = getattr(limits, "dedup_window", None)
    return float(declared) if declared is not None else DEFAULT_DEDUP_WINDOW


async def create_once(
    store: Store, record: RunRecord, key: str, window: float, now: datetime
) -> tuple[RunRecord, bool]:
    """Create ``record`` unless a live run of its workflow holds ``key``: the stored run
    (``record``'s or the one holding the key) and whether this call created it.

    Raises:
        StemError: the store keeps no slots.
        StoreError: the key changed hands too often to settle.
    """
    if not isinstance(store, Slots):
        raise StemError(f"the store {type(store).__name__} keeps no slots: no dedup_key there")
    scope = f"dedup:{record.workflow}:{key}"
    expires = now + timedelta(seconds=window)
    for _ in range(_TRIES):
        if await store.acquire_slot(scope, record.run_id, 1, now, expires):
            return await store.create_run(record)
        holders = await store.slot_holders(scope, now)
        if not holders:
            continue  # it expired or was given up meanwhile
        other = holders[0]
        existing = await store.get_run(other)
        if existing is None:
            # Taken by a start that has not created its run yet: create that run.
            return await store.create_run(msgspec.structs.replace(record, run_id=other))
        if not existing.status.is_terminal:
            return existing, False
        await store.release_slot(scope, other)
    raise StoreError(f"dedup_key {key!r}: gave up after {_TRIES} conflicts")
