"""A rolling deploy that adds a workflow: a daemon of the old code takes a run of the new
workflow and gives it back; a daemon of the new code runs it. Nothing fails, nothing is
lost (SQLite file, real time)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import stemd
from tests.helpers import open_app, wait_status

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

old_flow = stemd.Flow("old.flow")


@old_flow.step("only")
async def old_only(ctx: stemd.FlowContext) -> str:
    """Returns ``"old"``."""
    return "old"


added = stemd.Flow("added.flow")


@added.step("first")
async def first(ctx: stemd.FlowContext) -> int:
    """Returns ``n`` plus one."""
    return int(ctx.params["n"]) + 1


@added.step("second")
async def second(ctx: stemd.FlowContext) -> int:
    """Returns ten times the previous result."""
    return int(ctx.previous_result) * 10


async def test_a_run_taken_by_a_daemon_without_its_workflow_is_run_by_one_with_it(
    tmp_path: Path,
) -> None:
    """A run given back by a daemon without its workflow is completed by one with it, error-free."""
    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    async with stemd.App(store=store, workers=False) as client:
        async with open_app(old_flow, store=store):
            run_id = await client.start_workflow("added.flow", {"n": 4}, run_id="new-1")
            state = await wait_status(client, run_id, stemd.RunStatus.SUSPENDED)
            assert state.error is not None
            assert state.error.type == "UnknownWorkflow"
            assert "'added.flow' is not registered" in state.error.message
            assert state.resume_at is not None
        async with open_app(old_flow, added, store=store):
            result = await client.wait_for_completion(run_id, timeout=10)
    assert result.status is stemd.RunStatus.COMPLETED
    assert result.value == 50
    assert result.state.error is None  # the give-backs leave no error behind
