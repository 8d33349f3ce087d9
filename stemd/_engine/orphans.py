"""Runs this process claimed and could neither commit nor give back while the store was
away: they stay RUNNING under its live session, so no peer takes them; the session's
upkeep gives them back once the store answers (a part of :class:`~stemd._engine.engine.Engine`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from stemd._errors import LeaseLost
from stemd._store.base import Release

if TYPE_CHECKING:
    from stemd._clock import Clock
    from stemd._store.base import CommitResult, Store

__all__ = ["Orphans"]

log = structlog.get_logger("stemd.engine")


class Orphans:
    """``orphans`` (run id -> token) and their release."""

    store: Store
    clock: Clock
    orphans: dict[str, int]

    async def _after(self, result: CommitResult) -> None:
        raise NotImplementedError  # pragma: no cover - the engine's

    async def _give_back(self, run_id: str, token: int) -> None:
        """Release the slice ``token`` of ``run_id`` (runnable again, enqueued); forget it
        as an orphan once released or fenced out. A store error leaves it an orphan."""
        try:
            result = await self.store.commit(run_id, token, Release(), self.clock.now())
        except LeaseLost:
            self.orphans.pop(run_id, None)
            return
        except Exception as exc:
            log.warning("slice not given back; retrying later", run_id=run_id, error=repr(exc))
            return
        self.orphans.pop(run_id, None)
        await self._after(result)

    async def release_orphans(self) -> int:
        """Give back the runs this process claimed and could not commit or release while
        the store was away; return how many are still waiting for it."""
        for run_id, token in list(self.orphans.items()):
            await self._give_back(run_id, token)
        return len(self.orphans)
