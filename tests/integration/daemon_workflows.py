"""Workflows and an actor for the ``stemd run`` subprocess tests (loaded through the config's
``modules``/``actors``, with the repository root on PYTHONPATH).

Every step execution appends one line to the file named in the run's params, so a test
can tell exactly which steps ran, and how often.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import structlog

import stemd

log = structlog.get_logger("tests.daemon")


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _exists(path: str) -> bool:
    return Path(path).exists()


def _count_lines(path: str) -> int:
    return len(Path(path).read_text().splitlines())


async def work(path: str, pause: float, *, context: stemd.StepContext) -> str:
    """A step with a side effect: recorded once it has done its work."""
    await anyio.sleep(pause)
    log.info("side effect", path=path)
    _append(path, f"{context.run_id} {context.step_name}")
    return context.step_name


@stemd.script("test.steps")
async def steps(ctx: stemd.ScriptContext, params: dict[str, Any]) -> int:
    """``n`` steps, each followed by a short durable sleep: each slice runs one step."""
    for _ in range(int(params["n"])):
        await ctx.step("work", work, params["file"], float(params.get("pause", 0.0)))
        await ctx.sleep(float(params.get("sleep", 0.02)))
    return int(params["n"])


blocking = stemd.Flow("test.blocking")


@blocking.step("block")
async def block(ctx: stemd.FlowContext) -> str:
    """Records its start, then blocks for a minute while the file ``hold`` exists."""
    _append(ctx.params["file"], f"{ctx.run_id} block-start")
    if _exists(ctx.params["hold"]):
        await anyio.sleep(60)
    _append(ctx.params["file"], f"{ctx.run_id} block-end")
    return "done"


@blocking.step("after")
async def after(ctx: stemd.FlowContext) -> str:
    """Records that it ran."""
    _append(ctx.params["file"], f"{ctx.run_id} after")
    return "after"


class Crashy:
    """An actor that records each start in ``$CRASHY_FILE`` and crashes shortly after its
    first ``$CRASHY_TIMES`` starts; then it stays up."""

    name = "crashy"

    def __init__(self, app: stemd.App) -> None:
        self.path = os.environ["CRASHY_FILE"]
        self.times = int(os.environ.get("CRASHY_TIMES", "1"))

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        _append(self.path, f"start {os.getpid()}")
        task_status.started()
        starts = _count_lines(self.path)
        if starts <= self.times:
            await anyio.sleep(0.05)
            raise RuntimeError(f"crash number {starts}")
        await anyio.sleep_forever()


def crashy(app: stemd.App) -> Crashy:
    """The factory named in the config: ``actors = ["...daemon_workflows:crashy"]``."""
    return Crashy(app)


lifecycle = stemd.Flow("test.lifecycle")


@lifecycle.step("flaky", retry=stemd.Retry(max_attempts=3, backoff=0.01, jitter=False))
async def flaky(ctx: stemd.FlowContext) -> str:
    """Fails its first ``fail`` attempts (param), then succeeds."""
    if ctx.attempt <= int(ctx.params.get("fail", 0)):
        raise RuntimeError(f"flaky attempt {ctx.attempt}")
    return "ok"


@lifecycle.step("wait")
async def wait(ctx: stemd.FlowContext) -> str:
    """Waits for the topic ``hold`` (param) when given; else goes straight on."""
    topic = ctx.params.get("hold")
    if topic:
        await ctx.wait_for_event(topic)
    return "done"


doomed = stemd.Flow("test.doomed")


@doomed.step("boom")
async def boom(ctx: stemd.FlowContext) -> str:
    """Always fails, with no retry."""
    raise ValueError("doomed from the start")
