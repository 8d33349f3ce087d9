"""The live CLI's pieces over a store client: wait's progress line, watch's lines."""

from __future__ import annotations

import argparse
import io

import anyio
import pytest

import stemd
from stemd._cli.client import StoreClient
from stemd._cli.live import wait_with_progress, watch
from tests.helpers import open_app, wait_status

pytestmark = pytest.mark.anyio

held = stemd.Flow("live.held")


@held.step("first")
async def first(ctx: stemd.FlowContext) -> int:
    """Returns 1."""
    return 1


@held.step("hold")
async def hold(ctx: stemd.FlowContext) -> str:
    """Waits for ``live.go``."""
    return str((await ctx.wait_for_event("live.go"))["by"])


async def test_wait_draws_progress_then_erases_it() -> None:
    """While the run waits, wait draws one line (run, status, topic) on the terminal,
    rewritten in place, and erases it once the run has ended."""
    async with open_app(held) as app:
        run_id = await app.start_workflow(held, run_id="p1")
        await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)
        drawn = anyio.Event()

        class Terminal(io.StringIO):
            def write(self, text: str) -> int:
                if "waiting on live.go" in text:
                    drawn.set()
                return super().write(text)

        err = Terminal()
        async with anyio.create_task_group() as tg:

            async def release() -> None:
                await drawn.wait()
                await app.emit("live.go", {"by": "ana"})

            tg.start_soon(release)
            state, timed_out = await wait_with_progress(StoreClient(app), run_id, 10, err)
    assert (state.status, state.result, timed_out) == (stemd.RunStatus.COMPLETED, "ana", False)
    text = err.getvalue()
    assert text.startswith("\r\x1b[2K")
    assert "run p1  suspended, waiting on live.go" in text
    assert text.endswith("\r\x1b[2K")


async def test_watch_prints_the_timeline_and_times_out_with_5() -> None:
    """Watch prints the run, each checkpoint so far and its status; with a timeout that
    passes first it exits 5."""
    async with open_app(held) as app:
        run_id = await app.start_workflow(held, run_id="w1")
        await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)
        out = io.StringIO()
        args = argparse.Namespace(run_id=run_id, timeout=0.3, json=False)
        assert await watch(StoreClient(app), args, out) == 5
    lines = out.getvalue().splitlines()
    assert lines[0] == "run w1 of live.held"
    assert "step" in lines[1]
    assert "first" in lines[1]
    assert lines[-1].strip() == "status      suspended, waiting on live.go"
