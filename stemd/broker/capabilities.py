"""What some brokers can do beyond the :class:`~stemd.broker.base.Broker` protocol.

Each capability is a named, runtime-checkable protocol: the App and its actors ask
``isinstance(broker, QueueDepth)``, never ``getattr``. (A delivery's heartbeat is part of
:class:`~stemd.broker.base.Delivery` itself: ``None`` when the broker needs none.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from stemd.actors.supervisor import Actor
    from stemd.engine.engine import Engine

__all__ = ["HelperActors", "QueueDepth"]


@runtime_checkable
class QueueDepth(Protocol):
    """A broker that knows how many run ids wait in a queue (the in-process one)."""

    def depth(self, queue: str) -> int:
        """Run ids waiting in ``queue`` (not those being worked on)."""
        ...


@runtime_checkable
class HelperActors(Protocol):
    """A broker that needs actors of its own beside the workers (JetStream: the
    dead-letter handler and the server-side timer schedules)."""

    def actors(self, engine: Engine) -> list[Actor]:
        """The actors to run, under the App's supervisor, while the broker is open."""
        ...
