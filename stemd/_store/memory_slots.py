"""The memory store's slots (:class:`~stemd._store.capabilities.Slots`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

__all__ = ["MemorySlots"]


class MemorySlots:
    """Slots in a dictionary: scope → holder → when its hold expires."""

    _slots: dict[str, dict[str, datetime]]

    async def acquire_slot(
        self, scope: str, holder: str, limit: int, now: datetime, expires_at: datetime
    ) -> bool:
        if not hasattr(self, "_slots"):
            self._slots = {}
        held = self._slots.setdefault(scope, {})
        for other, until in list(held.items()):
            if until <= now:
                del held[other]
        if holder not in held and len(held) >= limit:
            return False
        held[holder] = expires_at
        return True

    async def slot_holders(self, scope: str, now: datetime) -> list[str]:
        held = getattr(self, "_slots", {}).get(scope, {})
        return sorted(holder for holder, until in held.items() if until > now)

    async def release_slot(self, scope: str, holder: str) -> None:
        if hasattr(self, "_slots"):
            self._slots.get(scope, {}).pop(holder, None)
