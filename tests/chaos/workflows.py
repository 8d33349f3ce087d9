"""Workflows of the chaos and load tests, loaded by ``stemd run`` through the config's
``modules`` (the repository root is on PYTHONPATH).

Every step execution appends one line to the file named by the run's ``file`` param and
fsyncs it before the step returns, so a test can count exactly which steps ran, how
often, and in which process::

    <run_id> <step> <attempt> <ok|fail|start> <pid>

A run's params say what it does (see :func:`expected_result` for what it must return):
``sleep`` (seconds of durable sleep), ``event`` (``"none"``, ``"emit"``: wait for an
event on ``chaos.<run_id>``; ``"timeout"``: wait for one that never comes, ``timeout``
seconds), ``fails`` (failed attempts before the retried step succeeds), ``child`` (start
a ``chaos.child`` run and wait for it) and ``loops`` (more checkpoints named ``loop``,
``loop#1``, ...).
"""

from __future__ import annotations

import os
from typing import Any

import anyio

import stemd

__all__ = ["CHILD_RESULT", "effect", "expected_result", "topic"]

CHILD_RESULT = "c3"
_RETRY = stemd.Retry(max_attempts=4, backoff=0.05, max_backoff=0.2, jitter=False)


def topic(run_id: str) -> str:
    """The event topic a run of these workflows waits on."""
    return f"chaos.{run_id}"


def effect(path: str, run_id: str, step: str, attempt: int, outcome: str) -> None:
    """Record one execution of ``step`` durably (appended and fsynced)."""
    line = f"{run_id} {step} {attempt} {outcome} {os.getpid()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def expected_result(workflow: str, params: dict[str, Any], run_id: str) -> Any:
    """What a run of ``workflow`` with ``params`` returns when nothing goes wrong."""
    event: Any = None
    if params["event"] == "emit":
        event = {"for": run_id}
    elif params["event"] == "timeout":
        event = "timeout"
    if workflow == "chaos.flow":
        return {"event": event, "tries": params["fails"] + 1}
    return {
        "event": event,
        "tries": params["fails"] + 1,
        "child": CHILD_RESULT if params["child"] else None,
        "loops": params["loops"],
    }


# -- script ---------------------------------------------------------------------------------


async def mark(path: str, *, context: stemd.StepContext) -> str:
    """A step whose only work is its side effect."""
    effect(path, context.run_id, context.step_name, context.attempt, "ok")
    return context.step_name


async def flaky(path: str, fails: int, *, context: stemd.StepContext) -> int:
    """Fails its first ``fails`` attempts, then succeeds."""
    if context.attempt <= fails:
        effect(path, context.run_id, context.step_name, context.attempt, "fail")
        raise RuntimeError(f"attempt {context.attempt} fails on purpose")
    effect(path, context.run_id, context.step_name, context.attempt, "ok")
    return context.attempt


async def _wait(ctx: stemd.ScriptContext | stemd.FlowContext, params: dict[str, Any]) -> Any:
    if params["event"] == "emit":
        return await ctx.wait_for_event(topic(ctx.run_id))
    if params["event"] == "timeout":
        try:
            await ctx.wait_for_event(topic(ctx.run_id), timeout=params["timeout"])
        except stemd.EventTimeout:
            return "timeout"
        raise AssertionError("an event came that nobody emits")
    return None


@stemd.script("chaos.mixed")
async def mixed(ctx: stemd.ScriptContext, params: dict[str, Any]) -> dict[str, Any]:
    """A step, a durable sleep, an event wait, a retried step, a child, a loop."""
    path = params["file"]
    await ctx.step("first", mark, path)
    await ctx.sleep(params["sleep"])
    event = await _wait(ctx, params)
    tries = await ctx.step("flaky", flaky, path, params["fails"], retry=_RETRY)
    child = None
    if params["child"]:
        child_id = await ctx.start_child(
            "chaos.child", {"file": path, "sleep": params["sleep"] / 2}
        )
        child = await ctx.wait_child(child_id)
    for _ in range(params["loops"]):
        await ctx.step("loop", mark, path)
    return {"event": event, "tries": tries, "child": child, "loops": params["loops"]}


# -- flows ----------------------------------------------------------------------------------

child = stemd.Flow("chaos.child")


@child.step("c1")
async def c1(ctx: stemd.FlowContext) -> str:
    effect(ctx.params["file"], ctx.run_id, "c1", ctx.attempt, "ok")
    return "c1"


@child.step("c2")
async def c2(ctx: stemd.FlowContext) -> str:
    # Re-entered from the top after the sleep: the side effect comes after it.
    await ctx.sleep(ctx.params["sleep"])
    effect(ctx.params["file"], ctx.run_id, "c2", ctx.attempt, "ok")
    return "c2"


@child.step("c3")
async def c3(ctx: stemd.FlowContext) -> str:
    effect(ctx.params["file"], ctx.run_id, "c3", ctx.attempt, "ok")
    return CHILD_RESULT


flow = stemd.Flow("chaos.flow")


@flow.step("f1")
async def f1(ctx: stemd.FlowContext) -> str:
    effect(ctx.params["file"], ctx.run_id, "f1", ctx.attempt, "ok")
    return "f1"


@flow.step("f2")
async def f2(ctx: stemd.FlowContext) -> Any:
    await ctx.sleep(ctx.params["sleep"])
    event = await _wait(ctx, ctx.params)
    effect(ctx.params["file"], ctx.run_id, "f2", ctx.attempt, "ok")
    return event


@flow.step("f3", retry=_RETRY)
async def f3(ctx: stemd.FlowContext) -> dict[str, Any]:
    fails = ctx.params["fails"]
    if ctx.attempt <= fails:
        effect(ctx.params["file"], ctx.run_id, "f3", ctx.attempt, "fail")
        raise RuntimeError(f"attempt {ctx.attempt} fails on purpose")
    effect(ctx.params["file"], ctx.run_id, "f3", ctx.attempt, "ok")
    return {"event": ctx.previous_result, "tries": ctx.attempt}


# -- a step that outlives its lease (the stale-worker test) ---------------------------------

stale = stemd.Flow("chaos.stale")


@stale.step("hold")
async def hold(ctx: stemd.FlowContext) -> int:
    """Records its start, holds the run for ``hold`` seconds, records its end."""
    effect(ctx.params["file"], ctx.run_id, "hold", ctx.attempt, "start")
    await anyio.sleep(ctx.params["hold"])
    effect(ctx.params["file"], ctx.run_id, "hold", ctx.attempt, "ok")
    return os.getpid()


@stale.step("after")
async def after(ctx: stemd.FlowContext) -> dict[str, int]:
    effect(ctx.params["file"], ctx.run_id, "after", ctx.attempt, "ok")
    return {"hold": ctx.previous_result, "after": os.getpid()}
