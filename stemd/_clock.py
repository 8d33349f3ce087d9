"""Time, injected: the engine, stores and timer read it only through a :class:`Clock`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio

__all__ = ["Clock", "SystemClock", "utcnow"]


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


class Clock(Protocol):
    """A source of time that can also wait."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until ``seconds`` of this clock's time have passed."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Wait until this clock reads ``when`` or later."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))

    async def sleep_until(self, when: datetime) -> None:
        await anyio.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()))


def after(clock: Clock, seconds: float) -> datetime:
    """The instant ``seconds`` after the clock's now."""
    return clock.now() + timedelta(seconds=seconds)
