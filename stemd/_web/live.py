"""Live updates: which runs changed, told to the pages by server-sent events.

:class:`ChangeHub` is an engine observer: each status change or finished step of a run
wakes the streams that follow that run or the run list. Its hooks only set flags (a dict
lookup and an ``anyio.Event``), so an open dashboard costs the engine next to nothing; a
stream sends at most one ``changed`` event per interval, and the page then fetches what
it shows again. A run's stream also re-reads the run every few seconds and tells the page
when it moved, for changes made by another process sharing the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from stemd._engine.observer import Observer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd._engine.observer import RunChanged, RunStarted
    from stemd._operations import Operations

__all__ = ["ChangeHub", "list_stream", "run_stream"]

_LIST_INTERVAL = 1.0  # at most one `changed` per second on the run list
_RUN_INTERVAL = 0.2
_POLL = 3.0  # a run's stream re-reads the run this often when told nothing
_PING = 15.0


class ChangeHub(Observer):
    """Wakes the live streams when runs change. With no stream waiting, each hook is one
    test of two attributes: a daemon nobody watches pays nothing more."""

    def __init__(self) -> None:
        self.changes = 0
        self._any: anyio.Event | None = None  # set at the next change; None: nobody waits
        self._runs: dict[str, anyio.Event] = {}
        self._waiting: dict[str, int] = {}  # streams waiting on each run
        self.closing = anyio.Event()

    def run_started(self, event: RunStarted) -> None:
        if self._any is not None or self._runs:
            self._touch(event.run_id)

    def run_changed(self, event: RunChanged) -> None:
        # Every commit of a run (a step's checkpoint, a wait, a wake-up, its end) is one.
        if self._any is not None or self._runs:
            self._touch(event.run_id)

    def _touch(self, run_id: str) -> None:
        self.changes += 1
        waiting, self._any = self._any, None
        if waiting is not None:
            waiting.set()
        event = self._runs.pop(run_id, None)
        if event is not None:
            event.set()

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self.closing.set()
        if self._any is not None:
            self._any.set()
        for event in self._runs.values():
            event.set()

    async def any_change(self, timeout: float) -> bool:
        """Wait for a change to any run; whether one came within ``timeout``."""
        if self.closing.is_set():
            return True
        if self._any is None:
            self._any = anyio.Event()
        event = self._any
        with anyio.move_on_after(timeout):
            await event.wait()
            return True
        return False

    async def run_change(self, run_id: str, timeout: float) -> bool:
        """Wait for a change to ``run_id``; whether one came within ``timeout``."""
        if self.closing.is_set():
            return True
        event = self._runs.get(run_id)
        if event is None:
            event = self._runs[run_id] = anyio.Event()
        self._waiting[run_id] = self._waiting.get(run_id, 0) + 1
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
                return True
            return False
        finally:
            left = self._waiting.pop(run_id) - 1
            if left:
                self._waiting[run_id] = left
            elif self._runs.get(run_id) is event:
                del self._runs[run_id]  # nobody waits on it now: no hook work for it


def _sse(event: str, data: str = "{}") -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


async def list_stream(hub: ChangeHub) -> AsyncIterator[bytes]:
    """The run list's stream: ``changed`` when runs changed (at most once a second)."""
    yield b"retry: 3000\n\n"
    while not hub.closing.is_set():
        if await hub.any_change(_PING):
            if hub.closing.is_set():
                return
            yield _sse("changed", str(hub.changes))
            await anyio.sleep(_LIST_INTERVAL)
        else:
            yield b": ping\n\n"


def _mark(state: object) -> tuple[object, ...]:
    return (
        getattr(state, "status", None),
        getattr(state, "updated_at", None),
        len(getattr(state, "checkpoints", None) or ()),
    )


async def run_stream(hub: ChangeHub, ops: Operations, run_id: str) -> AsyncIterator[bytes]:
    """A run's stream: ``changed`` whenever the run moved (``ended`` once it has ended)."""
    yield b"retry: 2000\n\n"
    state = await ops.get_run(run_id)
    last = _mark(state)
    while not hub.closing.is_set():
        await hub.run_change(run_id, _POLL)
        if hub.closing.is_set():
            return
        state = await ops.get_run(run_id)
        mark = _mark(state)
        if mark != last:
            last = mark
            yield _sse("changed", f'"{getattr(state, "status", "")}"')
            await anyio.sleep(_RUN_INTERVAL)
        else:
            yield b": ping\n\n"
