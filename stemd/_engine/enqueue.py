"""Enqueueing after a commit: the commit is the truth, the message only a prompt.

A transition is committed first, then its run is enqueued. When the broker cannot take the
message (NATS away: :class:`~stemd._errors.TransportError`), the transition stands and the
caller is not told it failed, since it did not: the run is runnable in the store with no
lease, and the sweeper of every daemon serving its queue enqueues such runs every
``sweep_interval`` seconds, so it executes once the broker is back. Raising instead made
callers retry what had succeeded (a ``start`` without a run id made a second run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from stemd._errors import PermissionDenied, TransportError

if TYPE_CHECKING:
    from stemd._broker.base import Broker

__all__ = ["enqueue_or_defer"]

log = structlog.get_logger("stemd.engine")


async def enqueue_or_defer(broker: Broker, run_id: str, queue: str, key: str) -> bool:
    """Enqueue ``run_id`` on ``queue``; return ``False`` when the broker is away and the
    enqueue was left to the sweeper.

    Raises:
        PermissionDenied: the broker refused the publish (a configuration error, which
            the sweeper would meet too).
    """
    try:
        await broker.enqueue(run_id, queue, key=key)
    except PermissionDenied:
        raise
    except TransportError as exc:
        log.warning(
            "committed; enqueue left to the sweeper (broker unreachable)",
            run_id=run_id,
            queue=queue,
            error=str(exc),
        )
        return False
    return True
