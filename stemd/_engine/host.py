"""What an execution needs of the engine that runs it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from stemd._clock import Clock
    from stemd._codec import Codec
    from stemd._engine.observer import Observers
    from stemd._store.base import Store

__all__ = ["Host"]


class Host(Protocol):
    """What an execution needs of the engine that runs it."""

    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def observers(self) -> Observers: ...

    def codec_for(self, workflow: str) -> Codec: ...

    def resolve(self, workflow: Any) -> tuple[str, Any]: ...

    async def start_run(
        self,
        workflow: Any,
        params: Any = None,
        *,
        run_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> tuple[str, bool]: ...
