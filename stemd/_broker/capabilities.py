"""What some brokers can do beyond the :class:`~stemd._broker.base.Broker` protocol.

Each capability is a named, runtime-checkable protocol: the App and its actors ask
``isinstance(broker, QueueDepth)``, never ``getattr``. (A delivery's heartbeat is part of
:class:`~stemd._broker.base.Delivery` itself: ``None`` when the broker needs none.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stemd._actor import Actor
    from stemd._clock import Clock
    from stemd._engine.observer import Observers

if TYPE_CHECKING:
    from stemd._natsconn import NatsConnection

__all__ = [
    "EngineOps",
    "HelperActors",
    "InFlightTasks",
    "LocalLanes",
    "QueueDepth",
    "WorkQueueStreams",
]


class EngineOps(Protocol):
    """What the broker's helper actors need of the engine (an
    :class:`~stemd._engine.engine.Engine` has it): cancelling a dead-lettered run, the
    observers to be told of every timer set through, its clock, and firing a run's
    timer."""

    @property
    def observers(self) -> Observers:
        """The engine's observers."""
        ...

    @property
    def clock(self) -> Clock:
        """The engine's clock: what "due" means."""
        ...

    async def cancel(self, run_id: str, reason: str) -> bool:
        """Cancel the run; whether it was cancelled now."""
        ...

    async def fire_timer(self, run_id: str) -> object:
        """Fire the run's timer if due."""
        ...


@runtime_checkable
class QueueDepth(Protocol):
    """A broker that knows how many run ids wait in a queue (the in-process one)."""

    def depth(self, queue: str) -> int:
        """Run ids waiting in ``queue`` (not those being worked on)."""
        ...


@runtime_checkable
class LocalLanes(Protocol):
    """A broker whose queues are shared by processes that can hand this process's own
    run ids to its own workers in memory (JetStream: :mod:`stemd._broker.lane`)."""

    def serve_locally(self, queue: str, capacity: int) -> None:
        """This process's workers serve ``queue``: keep up to ``capacity`` of the run ids
        it enqueues there for them."""
        ...


@runtime_checkable
class InFlightTasks(Protocol):
    """A broker whose tasks, once delivered, stay with their receiver until acknowledged
    or its acknowledgement wait runs out (JetStream: ``ack_wait``), so that those a dead
    process fetched are held back that long unless sent again."""

    async def redeliver_in_flight(self, found: Sequence[tuple[str, str]]) -> int:
        """Send again the task of each ``(run_id, queue)`` (runnable runs nobody holds)
        that was delivered and never acknowledged; how many were sent."""
        ...


@runtime_checkable
class HelperActors(Protocol):
    """A broker that needs actors of its own beside the workers (JetStream: the
    dead-letter handler and the server-side timer schedules)."""

    def actors(self, engine: EngineOps) -> list[Actor]:
        """The actors to run, under the App's supervisor, while the broker is open."""
        ...


class WorkQueueStreams(Protocol):
    """What the JetStream broker's helper actors read of it: its connection, its work
    queue's stream and its subject prefix (each actor's protocol adds what it needs)."""

    @property
    def conn(self) -> NatsConnection: ...

    @property
    def stream(self) -> str: ...

    @property
    def prefix(self) -> str: ...
