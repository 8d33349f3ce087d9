"""A clock that tests move by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio

__all__ = ["ManualClock"]


class ManualClock:
    """A :class:`stemd._clock.Clock` whose time only moves when :meth:`advance` is called.

    Sleepers wake as soon as the clock passes their deadline, so tests exercise sleeps,
    timeouts, retries and policies without real waiting.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._moved = anyio.Event()

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + timedelta(seconds=max(0.0, seconds))
        while self._now < deadline:
            await self._moved.wait()
        await anyio.lowlevel.checkpoint()

    async def sleep_until(self, when: datetime) -> None:
        while self._now < when:
            await self._moved.wait()
        await anyio.lowlevel.checkpoint()

    def advance(self, seconds: float | timedelta) -> datetime:
        """Move time forward and wake every sleeper whose deadline passed."""
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        self._now += timedelta(seconds=seconds)
        moved, self._moved = self._moved, anyio.Event()
        moved.set()
        return self._now
