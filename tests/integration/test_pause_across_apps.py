"""A workflow paused or resumed for its new runs (``new_runs=True``) through one App is
honoured by the starts of another App on the same store: on SQLite (one file) and on the
JetStream KV store (one bucket), where a start does not read the pause but fences its
write on what it knows of it."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import pytest

import stemd
from tests.helpers import open_app, wait_status
from tests.stores import shared_nats_server

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

RunStatus = stemd.RunStatus


@stemd.script("across.waiter")
async def waiter(ctx: stemd.ScriptContext, params: Any) -> Any:
    """Waits for an event on across.go and returns it."""
    return await ctx.wait_for_event("across.go")


@pytest.fixture(params=["sqlite", "jetstream"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One store that two Apps open each for themselves."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/across.db"
    server = await shared_nats_server()
    return f"{server.url}?bucket=t{secrets.token_hex(6)}"


async def test_a_pause_made_by_another_app_is_honoured_by_a_start_here(store_url: str) -> None:
    """App B has started a run (and knows its workflow unpaused); App A pauses the
    workflow's new runs: B's next run starts paused. A resumes them: B's next run runs."""
    async with open_app(waiter, store=store_url) as a, open_app(waiter, store=store_url) as b:
        first = await b.start_workflow(waiter)
        await wait_status(b, first, RunStatus.SUSPENDED)
        assert await a.pause_runs(workflow="across.waiter", new_runs=True) == 1
        paused = await b.get_run(await b.start_workflow(waiter))
        assert paused is not None
        assert paused.paused
        assert paused.status is RunStatus.PENDING
        assert await a.resume_runs(workflow="across.waiter", new_runs=True) == 2
        last = await b.start_workflow(waiter)
        state = await wait_status(b, last, RunStatus.SUSPENDED)
        assert not state.paused
        await wait_status(b, paused.run_id, RunStatus.SUSPENDED)  # resumed, at its wait
        assert await b.emit("across.go", 1) == 3
        assert (await b.wait_for_completion(last, timeout=10)).value == 1
