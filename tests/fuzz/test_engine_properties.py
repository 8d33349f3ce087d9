"""Property tests of the engine (hypothesis, memory store, ManualClock): for random
workflows (steps that fail a few times before they succeed, durable sleeps, event waits
that get their event or time out) and random crash points (a worker process that dies
before or after a step's side effect, before the step's checkpoint), the run ends in the
same state as without crashes; no step whose checkpoint was committed runs again, and
each crash repeats at most one step execution.

A crash: the dying App's store turns dead (every call fails, as for a process that is
gone: nothing is written, no session renewed, nothing released); a fresh App takes over on
the same store once the dead App's session is ended, as a peer ends a session silent for
its lease.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import stemd
from stemd._errors import StoreError
from stemd._store.memory import MemoryStore
from stemd.testing import ManualClock
from tests.chaos.harness import scale

LEASE = 30.0
SETTLE = 10.0  # real seconds a slice may take

Op = tuple[Any, ...]


@dataclass
class World:
    """What the steps of the example being run report to, and where crashes come from."""

    crashes: list[tuple[int, str]]  # (execution number, "before" | "after" the effect)
    executions: int = 0
    effects: Counter[str] = field(default_factory=Counter)
    dying: DeadableStore | None = None
    crashed: int = 0


WORLD: World | None = None


class DeadableStore:
    """A store seen by one App: passes every call through to the shared store until the
    App's process "dies", then fails every call."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.dead = False

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.dead:
                raise StoreError("the process is gone")
            return await attr(*args, **kwargs)

        return call


async def run_step(index: int, fails: int, *, context: stemd.StepContext) -> str:
    """A step with a side effect, failing its first ``fails`` attempts; the place where
    the current world may crash its process."""
    world = WORLD
    assert world is not None
    world.executions += 1
    crash = next((when for n, when in world.crashes if n == world.executions), None)
    if crash == "before" and world.dying is not None:
        world.dying.dead = True
        raise RuntimeError("crashed")
    if context.attempt <= fails:
        world.effects[f"{context.step_name}:fail{context.attempt}"] += 1
        raise RuntimeError(f"attempt {context.attempt} fails")
    world.effects[context.step_name] += 1
    if crash == "after" and world.dying is not None:
        world.dying.dead = True
    return f"{context.step_name}@{context.attempt}"


@stemd.script("prop.plan")
async def plan(ctx: stemd.ScriptContext, params: dict[str, Any]) -> list[Any]:
    """Interprets ``params["ops"]``: steps, sleeps and event waits, in order."""
    out: list[Any] = []
    for i, op in enumerate(params["ops"]):
        if op[0] == "step":
            retry = stemd.Retry(max_attempts=op[1] + 1, backoff=1.0, jitter=False)
            out.append(await ctx.step(f"s{i}", run_step, i, op[1], retry=retry))
        elif op[0] == "sleep":
            await ctx.sleep(op[1])
            out.append("slept")
        else:
            try:
                out.append(await ctx.wait_for_event(f"t{i}", timeout=op[2]))
            except stemd.EventTimeout:
                out.append("timeout")
    return out


ops = st.lists(
    st.one_of(
        st.tuples(st.just("step"), st.integers(min_value=0, max_value=2)),
        st.tuples(st.just("sleep"), st.sampled_from([0.0, 1.0, 5.0])),
        st.tuples(
            st.just("wait"), st.sampled_from(["emit", "timeout"]), st.sampled_from([2.0, 60.0])
        ),
    ),
    min_size=1,
    max_size=7,
)


@st.composite
def plans(draw: st.DrawFn) -> tuple[list[Op], list[tuple[int, str]]]:
    """A plan and up to three crash points among the step executions it makes."""
    steps = draw(ops)
    executions = sum(op[1] + 1 for op in steps if op[0] == "step")
    crashes = draw(
        st.lists(
            st.tuples(
                st.integers(min_value=1, max_value=max(1, executions)),
                st.sampled_from(["before", "after"]),
            ),
            max_size=3,
            unique_by=lambda c: c[0],
        )
    )
    return steps, crashes


async def execute(steps: list[Op], crashes: list[tuple[int, str]]) -> tuple[stemd.RunState, World]:
    """Run one plan to its end, crashing where told; return its final state."""
    global WORLD
    world = WORLD = World(crashes)
    shared = MemoryStore()
    clock = ManualClock()
    run_id = "prop"
    apps_left = len(crashes) + 1
    started = False
    dead_owner: str | None = None
    for _ in range(apps_left):
        store = DeadableStore(shared)
        world.dying = store
        app = stemd.App(
            store=store,  # type: ignore[arg-type]
            workflows=[plan],
            clock=clock,
            options=stemd.AppOptions(timing=stemd.Timing(lease=LEASE)),
        )
        await app.__aenter__()
        try:
            if not started:
                await app.start_workflow(plan, {"ops": steps}, run_id=run_id)
                started = True
            else:
                clock.advance(LEASE + 1)
                assert dead_owner is not None  # its session went silent: a peer ends it
                await shared.end_session(dead_owner, clock.now())
            state = await drive(app, clock, run_id, steps, store)
            if state is not None:
                return state, world
        finally:
            try:
                await app.__aexit__(None, None, None)
            except Exception:
                assert store.dead  # only a dying App's actors fail
        world.crashed += 1
        dead_owner = app.owner
    raise AssertionError("the run did not end")


async def drive(
    app: stemd.App, clock: ManualClock, run_id: str, steps: list[Op], store: DeadableStore
) -> stemd.RunState | None:
    """Play the environment until the run ends (its state) or this App's process dies."""
    seen = -1  # executions of the run already acted upon: act after the next one only
    polls = 0
    for _ in range(200):
        state: stemd.RunState | None = None
        with anyio.fail_after(SETTLE):
            while not store.dead:
                state = await app.get_run(run_id)
                assert state is not None
                idle = state.status not in (stemd.RunStatus.PENDING, stemd.RunStatus.RUNNING)
                if idle and state.attempts > seen:
                    break
                await anyio.sleep(0.001)
                # Time goes by while the run is runnable: the sweeper, which takes over a
                # dead worker's run, sleeps on this clock.
                polls += 1
                if polls % 20 == 0:
                    clock.advance(1.0)
        if store.dead:
            return None
        assert state is not None
        if state.status.is_terminal:
            return state
        seen = state.attempts
        topic = state.wait_topic
        if topic is not None and steps[int(topic[1:])][1] == "emit":
            assert await app.emit(topic, f"payload-{topic}") == 1
        else:
            assert state.resume_at is not None, state
            clock.advance(max(0.0, (state.resume_at - clock.now()).total_seconds()) + 0.001)
    raise AssertionError("the run did not settle")


@settings(
    max_examples=scale(300, 3000),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plan_and_crashes=plans())
@pytest.mark.timeout(scale(120, 1800))
def test_crashes_anywhere_end_in_the_crash_free_state(
    plan_and_crashes: tuple[list[Op], list[tuple[int, str]]],
) -> None:
    """Random crashes leave a random plan in its crash-free end state, re-running little."""
    steps, crashes = plan_and_crashes
    calm, calm_world = anyio.run(execute, steps, [])
    crashed, world = anyio.run(execute, steps, crashes)
    assert crashed.status is calm.status is stemd.RunStatus.COMPLETED, (crashed, calm)
    assert crashed.result == calm.result
    assert crashed.checkpoints == calm.checkpoints
    assert calm_world.crashed == 0
    names = {f"s{i}" for i, op in enumerate(steps) if op[0] == "step"}
    for name in names:
        assert calm_world.effects[name] == 1, (name, calm_world.effects)
        assert 1 <= world.effects[name] <= 1 + world.crashed, (name, world.effects, crashes)
    assert sum(world.effects[n] - 1 for n in names) <= world.crashed
    event(f"crashes: {world.crashed}")
