"""Closing an embedded App never leaves a lease held by no one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest

import stemd

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

ROUNDS = 10
slowish = stemd.Flow("close.slowish")


@slowish.step("one")
async def one(ctx: stemd.FlowContext) -> str:
    """A step that takes a moment."""
    await anyio.sleep(0.001)
    return "one"


async def test_closing_right_after_starts_leaves_no_run_held(tmp_path: Path) -> None:
    """Runs claimed while the App closes (a claim the SQLite writer commits for a caller
    being cancelled, too) are given back: none stays RUNNING under a lease."""
    db = f"sqlite:///{tmp_path / 'stemd.db'}"
    for _ in range(ROUNDS):
        async with stemd.App(store=db, workflows=[slowish], concurrency=32) as app:
            for _ in range(30):
                await app.start_workflow(slowish)
    async with stemd.App(store=db, workers=False) as client:
        runs = await client.list_runs(limit=1000)
    assert len(runs) == 30 * ROUNDS
    held = [r.run_id for r in runs if r.lease_owner is not None]
    assert held == []
    assert all(r.status in (stemd.RunStatus.PENDING, stemd.RunStatus.COMPLETED) for r in runs)
