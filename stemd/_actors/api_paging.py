"""Replies that fit in a NATS message, whatever was accepted on the way in.

Each value a run holds (params, a step's result, an event) may be as large as a request,
so a run can outgrow a reply. Rather than refuse to show it (``the reply would take N
bytes``), the responder pages it:

- ``get`` answers a run that does not fit with the checkpoints that do and ``next``, a
  cursor (the index of the next checkpoint); asked again with ``checkpoints_after``, it
  answers the next ones. The first reply carries every other field; the later ones only
  ``run_id``, ``workflow``, ``status`` and their checkpoints.
- ``list`` and ``waiting`` answer fewer runs than asked (the store's ``next`` then says
  where to go on); a single run that still does not fit comes without its checkpoints,
  and ``partial`` says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from stemd import _wire as wire
from stemd._errors import StemError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stemd._model import RunPage, RunState

__all__ = ["fit_page", "fit_run"]

# What a cursor and the separators of one more checkpoint can add to a reply.
_SLACK = 64


def _size(value: Any) -> int:
    return len(wire.encode(value))


def fit_run(state: RunState, budget: int, after: str | None) -> bytes:
    """The JSON ``get`` reply for ``state`` in at most ``budget`` bytes, paged by
    checkpoints from the cursor ``after`` (``None``: the first reply).

    Raises:
        StemError: even one checkpoint (or the run's fields alone) exceeds ``budget``.
    """
    whole = wire.GetReply(run=state)
    if after is None:
        data = wire.encode(whole)
        if len(data) <= budget:
            return data
        base = msgspec.structs.replace(state, checkpoints={})
    else:
        base = msgspec.structs.replace(
            state,
            checkpoints={},
            params=None,
            result=None,
            error=None,
            wait_data=None,
            timeline=[],
        )
    used = _size(wire.GetReply(run=base, next="0")) + _SLACK
    if used > budget:
        raise StemError(
            f"run {state.run_id}: its params and result take {used} bytes, more than a "
            f"reply holds ({budget})"
        )
    names = list(state.checkpoints)
    start = int(after) if after is not None else 0
    page: dict[str, Any] = {}
    i = start
    while i < len(names):
        name = names[i]
        size = _size(name) + _size(state.checkpoints[name]) + 2
        if used + size > budget:
            break
        page[name] = state.checkpoints[name]
        used += size
        i += 1
    if page == {} and i < len(names) and after is not None:
        raise StemError(
            f"run {state.run_id}: checkpoint {names[i]!r} alone is larger than a reply "
            f"holds ({budget} bytes); read it from the store (stemd workflow get --store)"
        )
    next_ = str(i) if i < len(names) else None
    return wire.encode(
        wire.GetReply(run=msgspec.structs.replace(base, checkpoints=page), next=next_)
    )


async def fit_page(
    fetch: Callable[[int], Awaitable[RunPage]],
    reply: Callable[[RunPage, bool], Any],
    limit: int,
    budget: int,
) -> bytes:
    """The JSON reply of a listing in at most ``budget`` bytes: ``fetch(limit)`` again with
    half the limit while it does not fit; at one run, that run without its checkpoints
    (``reply(page, partial=True)``)."""
    while True:
        page = await fetch(limit)
        data = wire.encode(reply(page, False))
        if len(data) <= budget:
            return data
        if limit == 1:
            break
        limit = max(1, limit // 2)
    runs = [msgspec.structs.replace(r, checkpoints={}) for r in page.runs]
    page = msgspec.structs.replace(page, runs=runs)
    data = wire.encode(reply(page, True))
    if len(data) > budget:
        raise StemError(
            f"the run {runs[0].run_id} takes {len(data)} bytes even without its "
            f"checkpoints, more than a reply holds ({budget}): get it by id"
        )
    return data
