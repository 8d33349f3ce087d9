"""What some stores can do beyond the :class:`~stemd._store.base.Store` protocol, checked
with ``isinstance`` by whoever wants it (the metrics)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["PausedCounts"]


@runtime_checkable
class PausedCounts(Protocol):
    """A store that counts its paused runs (``stemd_runs_paused``)."""

    async def paused_counts(self) -> dict[str, int]:
        """How many runs are paused, by workflow (workflows with none left out)."""
        ...
