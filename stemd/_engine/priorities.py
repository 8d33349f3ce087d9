"""Priorities among the runs waiting for a slot of a concurrency limit (see
:mod:`stemd._engine.limits`), kept in the store so that every daemon sees one line.

A run that finds a limit's slots full joins the line of that limit (only of that one: a
run waiting for its key's slot does not keep others from the workflow's): a slot of scope
``line:<scope>`` with no limit, held by its *place* until :data:`LINE_HOLD` seconds later
(renewed at each try, so the place of a run that stopped trying lapses). Its place sorts
by the run's creation time moved :data:`PRIORITY_STEP` seconds earlier per unit of
priority. A run takes a free slot only when fewer runs *of another priority* are ahead of
it in line than there are free slots: a higher priority goes first, and a run waits behind
one of higher priority only if that one was created less than ``PRIORITY_STEP`` times the
difference later (aging: no run is passed over for ever). Runs of one priority are not
ordered among themselves (whichever tries first when a slot frees takes it): a strict
order would leave a slot free until the run at the head of the line tries again.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from stemd._errors import StemError

if TYPE_CHECKING:
    from stemd._store.base import RunRecord
    from stemd._store.capabilities import Slots

__all__ = [
    "LINE_HOLD",
    "MAX_PRIORITY",
    "PRIORITY_STEP",
    "in_turn",
    "join",
    "leave",
    "place_of",
    "validate_priority",
]

#: Seconds of waiting one unit of priority is worth.
PRIORITY_STEP = 10.0
#: Seconds a waiting run keeps its place in line without trying again.
LINE_HOLD = 3.0
#: The largest priority (and the smallest, negated).
MAX_PRIORITY = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_OFFSET_US = int(2 * MAX_PRIORITY * PRIORITY_STEP * 1_000_000)


def validate_priority(priority: Any) -> int:
    """``priority``, an integer from -1000 to 1000.

    Raises:
        StemError: it is not.
    """
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not -MAX_PRIORITY <= priority <= MAX_PRIORITY
    ):
        raise StemError(
            f"priority must be an integer from -{MAX_PRIORITY} to {MAX_PRIORITY}, not {priority!r}"
        )
    return priority


def place_of(rec: RunRecord) -> str:
    """The run's place in line (places sort as strings: earlier goes first)."""
    us = (rec.created_at - _EPOCH) // timedelta(microseconds=1)
    key = us + _OFFSET_US - int(rec.priority * PRIORITY_STEP * 1_000_000)
    return f"{max(key, 0):020d}:{rec.priority + MAX_PRIORITY:04d}:{rec.run_id}"


def _priority(place: str) -> int:
    return int(place.split(":", 2)[1]) - MAX_PRIORITY


async def in_turn(
    slots: Slots, place: str, scopes: list[tuple[str, int]], now: datetime
) -> tuple[str, int] | None:
    """``None`` when the run at ``place`` may take a slot of each scope now, else the
    scope where runs of other priorities ahead of it in line wait for every free slot."""
    mine = _priority(place)
    for scope, limit in scopes:
        line = await slots.slot_holders(f"line:{scope}", now)
        ahead = sum(1 for p in line if p < place and _priority(p) != mine)
        if ahead and ahead >= limit - len(await slots.slot_holders(scope, now)):
            return scope, limit
    return None


async def join(slots: Slots, place: str, scopes: list[tuple[str, int]], now: datetime) -> None:
    """Take (or keep) the run's place in the line of each of ``scopes``."""
    until = now + timedelta(seconds=LINE_HOLD)
    for scope, _ in scopes:
        await slots.acquire_slot(f"line:{scope}", place, 2**31, now, until)


async def leave(slots: Slots, place: str, scopes: list[tuple[str, int]]) -> None:
    """Give up the run's place in every line (it has its slots)."""
    for scope, _ in scopes:
        await slots.release_slot(f"line:{scope}", place)
