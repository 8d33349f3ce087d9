"""What some stores can do beyond the :class:`~stemd._store.base.Store` protocol, checked
with ``isinstance`` by whoever wants it (the metrics)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["PausedCounts", "Slots"]


@runtime_checkable
class PausedCounts(Protocol):
    """A store that counts its paused runs (``stemd_runs_paused``)."""

    async def paused_counts(self) -> dict[str, int]:
        """How many runs are paused, by workflow (workflows with none left out)."""
        ...


@runtime_checkable
class Slots(Protocol):
    """A store that keeps counted slots, shared by every process using it (flow control:
    see :mod:`stemd._engine.limits`). A slot is held by a holder until an instant; a hold
    that has expired frees its slot (the holder died)."""

    async def acquire_slot(
        self, scope: str, holder: str, limit: int, now: datetime, expires_at: datetime
    ) -> bool:
        """Hold a slot of ``scope`` for ``holder`` until ``expires_at``, if fewer than
        ``limit`` others hold one at ``now`` (a holder holding one already is renewed: always
        ``True``); whether it is held."""
        ...

    async def release_slot(self, scope: str, holder: str) -> None:
        """Free the slot ``holder`` holds in ``scope`` (none: nothing happens)."""
        ...

    async def slot_holders(self, scope: str, now: datetime) -> list[str]:
        """Who holds a slot of ``scope`` at ``now`` (expired holds left out), sorted."""
        ...
