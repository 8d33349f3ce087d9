"""The Broker protocol: how run ids reach workers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from stemd._store.base import Claim

__all__ = ["Broker", "Delivery", "HandOff"]


class Delivery(Protocol):
    """One run id handed to a worker. Acknowledge it only after the outcome is committed."""

    run_id: str
    #: The run's claim when it was made for the worker already (a run created claimed
    #: where a worker of this process waited: :class:`HandOff`);
    #: the worker advances it without claiming.
    claim: Claim | None

    @property
    def heartbeat(self) -> float | None:
        """Seconds after which the broker hands the run to another worker unless told, with
        :meth:`in_progress`, that the work goes on; ``None``: it never does (the worker
        pool then sends no heartbeats)."""
        ...

    async def ack(self) -> None:
        """The run was advanced and its outcome committed: forget the delivery."""
        ...

    async def nak(self, delay: float | None = None) -> None:
        """Hand the run out again, after ``delay`` seconds."""
        ...

    async def in_progress(self) -> None:
        """Still working on it: do not redeliver yet."""
        ...


class Broker(Protocol):
    """A queue of run ids to advance. Enqueueing is idempotent per ``key``."""

    async def open(self) -> None:
        """Connect and create what is needed."""
        ...

    async def close(self) -> None:
        """Release every resource."""
        ...

    async def enqueue(self, run_id: str, queue: str, *, key: str | None = None) -> None:
        """Ask a worker of ``queue`` to advance ``run_id``."""
        ...

    async def receive(self, queue: str) -> Delivery:
        """Wait for the next run id of ``queue``."""
        ...

    def queued(self, run_id: str) -> bool:
        """Whether ``run_id`` waits in a queue of this process, for its workers alone
        (``False`` from a broker whose queues are shared)."""
        ...


@runtime_checkable
class HandOff(Protocol):
    """A broker that can hand a run already claimed to a worker of this process waiting
    for one: the engine then creates a run it starts claimed, in one write instead of a
    create and a claim (:mod:`stemd._engine.handoff`). A port of the engine, beside
    :class:`Broker` (the other capabilities, :mod:`stemd._broker.capabilities`, are the
    App's and the actors')."""

    def room(self, queue: str) -> int:
        """How many more runs of ``queue`` this process's workers would take now, at
        once or nearly (the in-process broker: its idle workers; the JetStream broker:
        the room left in its lane)."""
        ...

    def hand_off(self, claim: Claim) -> None:
        """Give ``claim`` (its run's queue) to this process's workers, next."""
        ...
