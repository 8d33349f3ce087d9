"""start_child(..., ttl=, policy=) (issue 13): the child records both, on every store."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pytest

import stemd

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio


async def test_a_child_started_with_ttl_and_policy_records_them(store: Store) -> None:
    """A child started with ttl and policy keeps both, as a run started by the App does,
    and records its parent."""
    child = stemd.Flow("opts.child")

    @child.step("only")
    async def only(ctx: stemd.FlowContext) -> int:
        return 7

    policy = stemd.CancellationPolicy(max_run_duration=3600, max_suspend_duration=600)

    @stemd.script("opts.parent")
    async def parent(ctx: stemd.ScriptContext, params: Any) -> str:
        child_id = await ctx.start_child(
            "opts.child", None, ttl=timedelta(minutes=2), policy=policy
        )
        assert await ctx.wait_child(child_id) == 7
        return child_id

    async with stemd.App(store=store, workflows=[child, parent]) as app:
        run_id = await app.start_workflow(parent)
        result = await app.wait_for_completion(run_id, timeout=5)
        assert result.is_completed, result.error
        state = await app.get_run(result.value)
    assert state is not None
    assert state.parent_run_id == run_id
    assert state.ttl == 120
    assert state.policy == policy
