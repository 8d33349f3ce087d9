"""The App's helpers: its registry of workflows, what it records about each, how it opens
and closes a resource, and the limits and cursors of its paged listings."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from stemd._authoring.classes import definition_of
from stemd._codec import convert
from stemd._engine.engine import to_run_state
from stemd._engine.versions import Registry
from stemd._errors import RunNotFound, StemError
from stemd._model import RunStatus, WorkflowResult
from stemd._store.base import WorkflowInfo

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from stemd._codec import Codec
    from stemd._engine.engine import Engine, Workflow

__all__ = [
    "ALL",
    "Resource",
    "cursor",
    "opened",
    "positive",
    "registry",
    "wait_for_end",
    "workflow_info",
]


def registry(workflows: Iterable[Workflow | type]) -> Registry:
    """The workflows given, by name (several versions of one name may be given).

    Raises:
        TypeError: one is not a workflow.
        ValueError: two have the same name and version.
    """
    out = Registry()
    for given in workflows:
        wf = definition_of(given)  # a @stemd.workflow class: the script it defines
        name = getattr(wf, "name", None)
        if not isinstance(name, str) or getattr(wf, "kind", None) not in ("flow", "script"):
            raise TypeError(f"not a workflow (Flow, @stemd.script or @stemd.workflow): {wf!r}")
        out.add(wf)
    return out


def workflow_info(wf: Workflow) -> WorkflowInfo:
    """What the store records about a workflow served here: its name, kind, version and,
    for a flow, its declared steps in order."""
    steps = getattr(wf, "steps", None) if wf.kind == "flow" else None
    version = getattr(wf, "version", None)
    return WorkflowInfo(
        name=wf.name,
        kind="flow" if wf.kind == "flow" else "script",
        steps=None if steps is None else tuple(getattr(s, "name", str(s)) for s in steps),
        version=version if isinstance(version, (str, int)) else None,
    )


# The limit that means "all of them".
ALL = 2**62


def positive(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise StemError("limit must be a positive integer")
    return limit


def cursor(after: object) -> int | None:
    """The store position of a page cursor (``None``: the first page)."""
    if after is None:
        return None
    if isinstance(after, str) and after.isascii() and after.isdigit() and len(after) <= 19:
        return int(after)
    raise StemError(f"invalid cursor {after!r}: give the next of a previous page")


class Resource(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...


@asynccontextmanager
async def opened(resource: Resource) -> AsyncIterator[None]:
    """``resource`` open for the block; closed after it, whatever happens, in at most 10 s
    (shielded: a cancelled App still closes its files and connections)."""
    await resource.open()
    try:
        yield
    finally:
        with anyio.move_on_after(10, shield=True):
            await resource.close()


async def wait_for_end(
    engine: Engine, codec: Codec, run_id: str, limit: float | None, type: Any
) -> WorkflowResult[Any]:
    """The result of ``run_id`` once it has ended or ``limit`` seconds have passed (see
    :meth:`stemd.App.wait_for_completion`).

    Raises:
        RunNotFound: there is no such run.
    """
    poll = 0.01
    rec = None
    with anyio.move_on_after(limit):
        events = engine.events
        read = True
        while True:
            # Waiting before the read: an end published after it is not missed.
            ended = events.ended(run_id)
            try:
                if read:
                    rec = await engine.store.get_run(run_id)
                    if rec is None:
                        raise RunNotFound(f"no run {run_id}")
                    if rec.status.is_terminal:
                        break
                # Runs finished by another process are seen by polling, with backoff; a
                # run in this process's hands publishes its end here (no read needed).
                read = await events.within(ended, poll) or not engine.runs_here(run_id)
            finally:
                events.forget(run_id, ended)
            poll = min(poll * 2, 0.5)
    if rec is None:
        rec = await engine.store.get_run(run_id)
        if rec is None:
            raise RunNotFound(f"no run {run_id}")
    state = to_run_state(rec, await engine.store.get_checkpoints(run_id), codec)
    value = None
    if rec.status is RunStatus.COMPLETED and rec.result is not None:
        if type is None:
            value = state.result
        else:
            value = convert(state.result, type, what=f"result of run {run_id}")
    return WorkflowResult(
        run_id=run_id,
        status=rec.status,
        value=value,
        error=rec.error,
        state=state,
        timed_out=not rec.status.is_terminal,
    )
