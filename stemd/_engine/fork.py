"""Fork: a new run of the same workflow and params that starts with the checkpoints an
existing run recorded before a step, and runs from that step on. The original is not
touched (compare :meth:`~stemd._engine.engine.Engine.rewind`, which changes the run
itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stemd._authoring.definitions import Flow
from stemd._engine.observer import RunStarted
from stemd._engine.views import new_run_id
from stemd._errors import RunNotFound, StemError, StepNotFound
from stemd._model import RunStatus, validate_run_id
from stemd._store.base import RunRecord, base_step_name, compute_timer_at
from stemd._store.schedules import ForkStore

if TYPE_CHECKING:
    from stemd._engine.engine import Engine
    from stemd._store.base import Checkpoint

__all__ = ["fork_run", "kept_before"]


def kept_before(checkpoints: list[Checkpoint], step: str) -> list[Checkpoint]:
    """The checkpoints recorded before the first one of ``step`` (all, if it has none)."""
    for i, cp in enumerate(checkpoints):
        if base_step_name(cp.name) == step:
            return checkpoints[:i]
    return list(checkpoints)


async def _declared_steps(engine: Engine, workflow: str) -> tuple[str, ...]:
    """A flow's declared steps: from its definition here, else as a daemon registered it."""
    definition = engine.workflows.get(workflow)
    if isinstance(definition, Flow):
        return tuple(s.name for s in definition.steps)
    if definition is None:
        for info in await engine.store.registered_workflows():
            if info.name == workflow and info.steps is not None:
                return info.steps
    return ()


async def fork_run(engine: Engine, run_id: str, step: str, *, new_id: str | None = None) -> str:
    """Copy the checkpoints ``run_id`` recorded before ``step`` into a new run (id
    ``new_id``, else a fresh one) and start it; return the new run's id.

    Raises:
        RunNotFound: there is no run ``run_id``.
        StepNotFound: the run has no step ``step`` (none recorded, none declared).
        InvalidRunId: ``run_id`` or ``new_id`` is not a valid run id.
    """
    validate_run_id(run_id)
    forked = new_run_id() if new_id is None else validate_run_id(new_id)
    store = engine.store
    if not isinstance(store, ForkStore):
        raise StemError("this store cannot fork runs")
    rec = await store.get_run(run_id)
    if rec is None:
        raise RunNotFound(f"no run {run_id}")
    checkpoints = await store.get_checkpoints(run_id)
    known = {base_step_name(c.name) for c in checkpoints}
    known.discard("")  # a script body's own waits belong to no step
    known.update(await _declared_steps(engine, rec.workflow))
    if not isinstance(step, str) or step not in known:
        raise StepNotFound(f"run {run_id} has no step {step!r}")
    now = engine.clock.now()
    record = RunRecord(
        run_id=forked,
        workflow=rec.workflow,
        status=RunStatus.PENDING,
        params=rec.params,
        created_at=now,
        updated_at=now,
        queue=rec.queue,
        policy=rec.policy,
        ttl=rec.ttl,
        trace=engine.observers.trace_context(),
        # Not 0: a store may take a never-claimed run (token 0) to have no checkpoints.
        token=1,
    )
    record.timer_at = compute_timer_at(record)
    stored, created = await store.fork_run(record, kept_before(checkpoints, step))
    if not created:
        raise StemError(f"run {forked} exists already: a fork needs a new run id")
    for hook in engine.observers.run_started:
        hook(RunStarted(run_id=forked, workflow=rec.workflow))
    engine._changed(stored)
    await engine._enqueue(forked, stored.queue, stored.token)
    return forked
