"""The Actor protocol: what the supervisor runs. Its own module, below every layer that
makes actors (the actors, the brokers' helper actors, users' extra actors)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import anyio

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

__all__ = ["Actor"]


class Actor(Protocol):
    """A long-lived task that reports readiness through ``task_status.started()``."""

    name: str

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled."""
        ...
