"""The live updates' hub: which streams a change of a run wakes."""

from __future__ import annotations

import anyio
import pytest

from stemd._engine.observer import RunChanged
from stemd._model import RunStatus
from stemd._web.live import ChangeHub

pytestmark = pytest.mark.anyio


def _changed(run_id: str) -> RunChanged:
    return RunChanged(run_id=run_id, workflow="w", status=RunStatus.RUNNING)


async def test_a_change_wakes_the_list_and_that_runs_streams_only() -> None:
    """A change of run a wakes the list's waiters and a's, not b's."""
    hub = ChangeHub()
    woke: list[str] = []

    async def wait_any() -> None:
        if await hub.any_change(5):
            woke.append("list")

    async def wait_run(run_id: str) -> None:
        if await hub.run_change(run_id, 0.5):
            woke.append(run_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_any)
        tg.start_soon(wait_run, "a")
        tg.start_soon(wait_run, "b")
        await anyio.wait_all_tasks_blocked()
        hub.run_changed(_changed("a"))
    assert sorted(woke) == ["a", "list"]
    assert hub.changes == 1


def test_with_nobody_waiting_a_change_does_no_work() -> None:
    """No stream open: the hooks leave everything as it was (nothing counted)."""
    hub = ChangeHub()
    for _ in range(3):
        hub.run_changed(_changed("a"))
    assert hub.changes == 0


async def test_closing_ends_every_wait_at_once() -> None:
    """close() wakes every waiting stream and later waits return at once."""
    hub = ChangeHub()
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.any_change, 60)
            tg.start_soon(hub.run_change, "a", 60)
            await anyio.wait_all_tasks_blocked()
            hub.close()
        assert await hub.any_change(60)
