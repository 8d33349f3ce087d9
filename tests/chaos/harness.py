"""What the chaos tests share: the short/long switch, random plans of runs, daemons that
say when they are ready, an emitter, and the ledger that checks every step's executions
against what the store had committed at each kill.

The ledger's rule: a step whose checkpoint was committed when a process died never runs
again; a step that had run (its side effect is in the file) but was not committed may run
once more per kill; every other extra execution is a bug.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

import stemd
from stemd._errors import StemError
from tests.chaos.workflows import CHILD_RESULT, expected_result, topic
from tests.integration.daemon_proc import DaemonProcess, NotifyListener

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from pathlib import Path

__all__ = [
    "LONG",
    "Daemon",
    "Emitter",
    "Ledger",
    "Plan",
    "check_runs",
    "chaos_rng",
    "make_plans",
    "scale",
    "start_plans",
    "wait_ended",
]

T = TypeVar("T")

LONG = os.environ.get("STEMD_CHAOS_LONG", "") not in ("", "0")
MODULE = "tests.chaos.workflows"
TERMINAL = (stemd.RunStatus.COMPLETED, stemd.RunStatus.FAILED, stemd.RunStatus.CANCELLED)


def scale(short: T, long: T) -> T:
    """``long`` when ``STEMD_CHAOS_LONG=1``, else ``short``."""
    return long if LONG else short


def chaos_rng() -> tuple[random.Random, int]:
    """A random generator seeded from ``STEMD_CHAOS_SEED`` (or at random), and the seed,
    which failure messages carry so a failing run can be replayed."""
    seed = int(os.environ.get("STEMD_CHAOS_SEED") or random.SystemRandom().randrange(10**9))
    return random.Random(seed), seed


# -- plans ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """One run to start: its id, workflow and params, and when the emitter may deliver
    its event (seconds after the start of the test)."""

    run_id: str
    workflow: str
    params: dict[str, Any]
    emit_after: float = 0.0

    @property
    def expected(self) -> Any:
        return expected_result(self.workflow, self.params, self.run_id)

    def steps(self) -> set[str]:
        """The checkpoints whose side effect must be in the file (``ok``) once."""
        if self.workflow == "chaos.flow":
            return {"f1", "f2", "f3"}
        loops = ["loop"] + [f"loop#{i}" for i in range(1, self.params["loops"])]
        return {"first", "flaky", *loops[: self.params["loops"]]}


def make_plans(
    rng: random.Random, count: int, file: Path, horizon: float, prefix: str = "r"
) -> list[Plan]:
    """``count`` runs of ``chaos.mixed`` and ``chaos.flow`` with random sleeps (up to half
    of ``horizon`` seconds), event waits, failures, children and loops, so that runs stay
    in flight for about ``horizon`` seconds."""
    plans = []
    for i in range(count):
        workflow = rng.choice(("chaos.mixed", "chaos.mixed", "chaos.mixed", "chaos.flow"))
        params = {
            "file": str(file),
            "sleep": round(rng.uniform(0.02, horizon / 2), 3),
            "event": rng.choice(("none", "emit", "emit", "timeout")),
            "timeout": round(rng.uniform(0.05, horizon / 3), 3),
            "fails": rng.choice((0, 0, 1, 2)),
            "child": workflow == "chaos.mixed" and rng.random() < 0.3,
            "loops": rng.randint(0, 3),
        }
        plans.append(Plan(f"{prefix}{i:05d}", workflow, params, rng.uniform(0, horizon)))
    return plans


async def start_plans(client: stemd.App, plans: list[Plan], concurrency: int = 16) -> None:
    """Start every planned run (idempotent on the run id)."""
    limit = anyio.Semaphore(concurrency)

    async def start(plan: Plan) -> None:
        async with limit:
            await client.start_workflow(plan.workflow, plan.params, run_id=plan.run_id)

    async with anyio.create_task_group() as tg:
        for plan in plans:
            tg.start_soon(start, plan)


# -- daemons --------------------------------------------------------------------------------


class Daemon:
    """A ``stemd run --config CONFIG`` process that can be started again after a kill;
    :meth:`start` returns once it has said ``READY=1`` on its notify socket."""

    def __init__(self, cwd: Path, config: Path, name: str = "daemon") -> None:
        self.cwd = cwd
        self.config = config
        self.name = name
        self.proc: DaemonProcess | None = None
        self.notify: NotifyListener | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    async def start(self, timeout: float = 40.0) -> None:
        self.close()
        self.notify = NotifyListener(self.cwd, abstract=True)
        self.proc = DaemonProcess(self.cwd, self.config, self.notify)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while True:
            try:
                await anyio.to_thread.run_sync(self.notify.wait_for, "READY=1", 0.5)
                return
            except AssertionError:
                if not self.alive:
                    raise AssertionError(f"{self.name} exited:\n{self.stderr_tail()}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{self.name} not ready in {timeout}s:\n{self.stderr_tail()}"
                    ) from None

    def stderr_tail(self, chars: int = 4000) -> str:
        """The end of the daemon's output (its logs go to standard output)."""
        if self.proc is None:
            return ""
        return (self.proc.stdout + self.proc.stderr)[-chars:]

    def send(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.signal(signum)

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone."""
        if self.proc is not None:
            self.proc.kill()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (after SIGCONT, in case it is paused); the exit status."""
        if not self.alive:
            return None
        assert self.proc is not None
        self.proc.signal(signal.SIGCONT)
        self.proc.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.kill()

    def close(self) -> None:
        """Kill a process left running and release the notify socket."""
        if self.proc is not None:
            self.proc.kill()
        if self.notify is not None:
            self.notify.close()
            self.notify = None


# -- side effects and what was committed ----------------------------------------------------

EffectKey = tuple[str, str, int, str]  # run, step, attempt, ok|fail|start


def read_effects(path: Path) -> Counter[EffectKey]:
    """How many times each (run, step, attempt, outcome) was recorded."""
    out: Counter[EffectKey] = Counter()
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        run_id, step, attempt, outcome, _pid = line.split()
        out[(run_id, step, int(attempt), outcome)] += 1
    return out


def ok_counts(effects: Counter[EffectKey]) -> Counter[tuple[str, str]]:
    """Successful executions per (run, step)."""
    out: Counter[tuple[str, str]] = Counter()
    for (run_id, step, _attempt, outcome), n in effects.items():
        if outcome == "ok":
            out[(run_id, step)] += n
    return out


async def committed_steps(client: stemd.App) -> set[tuple[str, str]]:
    """(run, checkpoint) of every user checkpoint in the store now."""
    out: set[tuple[str, str]] = set()
    for rec in await client.store.list_runs(limit=1_000_000):
        for cp in await client.store.get_checkpoints(rec.run_id):
            if "@" not in cp.name:
                out.add((rec.run_id, cp.name))
    return out


@dataclass
class Snapshot:
    committed: set[tuple[str, str]]
    ok: Counter[tuple[str, str]]
    effects: Counter[EffectKey]


@dataclass
class Ledger:
    """The side-effect file and snapshots taken around each fault."""

    path: Path
    snapshots: list[Snapshot] = field(default_factory=list)
    # (before, after) snapshots of each fault.
    faults: list[tuple[Snapshot, Snapshot]] = field(default_factory=list)

    async def snapshot(self, client: stemd.App) -> Snapshot:
        """Record what is committed, *then* what has run: every execution that led to a
        commit seen here is already in the file."""
        committed = await committed_steps(client)
        effects = read_effects(self.path)
        snap = Snapshot(committed, ok_counts(effects), effects)
        self.snapshots.append(snap)
        return snap

    @asynccontextmanager
    async def fault(self, client: stemd.App) -> AsyncIterator[None]:
        """Snapshot before and after the fault injected in the block (the store must be
        reachable at both ends). A step not committed before the fault that had run by its
        end may run once more."""
        before = await self.snapshot(client)
        yield
        after = await self.snapshot(client)
        self.faults.append((before, after))

    def check(self, seed: int) -> Counter[EffectKey]:
        """Assert the ledger's rule; return the final counts."""
        effects = read_effects(self.path)
        ok = ok_counts(effects)
        for k, snap in enumerate(self.snapshots):
            for key in snap.committed:
                assert snap.ok[key] >= 1, f"seed {seed}: {key} committed with no side effect"
                assert ok[key] == snap.ok[key], (
                    f"seed {seed}: {key} was committed at snapshot {k} and ran again "
                    f"({snap.ok[key]} -> {ok[key]})"
                )
        for key, n in ok.items():
            interrupted = sum(
                1 for b, a in self.faults if a.ok[key] >= 1 and key not in b.committed
            )
            assert n <= 1 + interrupted, (
                f"seed {seed}: {key} ran {n}x with {interrupted} interruption(s)"
            )
        for (run_id, step, attempt, outcome), n in effects.items():
            if outcome == "fail":
                assert n <= 1 + len(self.faults), (
                    f"seed {seed}: failing attempt {attempt} of {run_id}/{step} ran {n}x"
                )
        return effects


# -- events ---------------------------------------------------------------------------------


class Emitter:
    """Delivers each planned event once its time has come, and emits once more after a
    delivery (which must find no waiter); counts what every emit resumed."""

    def __init__(self, client: stemd.App, plans: Iterable[Plan]) -> None:
        self.client = client
        self.plans = {p.run_id: p for p in plans if p.params["event"] == "emit"}
        self.resumed: Counter[str] = Counter()
        self.delivered: set[str] = set()
        self.finished: set[str] = set()
        self.errors: Counter[str] = Counter()
        self.last_error: Exception | None = None
        self.emits = 0

    @property
    def done(self) -> bool:
        return len(self.finished) == len(self.plans)

    async def run(self, started: float, interval: float = 0.1, limit: float = 3600) -> None:
        """Emit until every planned event was delivered and re-emitted, for at most
        ``limit`` seconds (the caller stops it sooner)."""
        with anyio.fail_after(limit):
            await self._emit_all(started, interval)

    async def _emit_all(self, started: float, interval: float) -> None:
        while not self.done:
            elapsed = time.monotonic() - started
            for run_id, plan in self.plans.items():
                if run_id in self.finished or plan.emit_after > elapsed:
                    continue
                try:
                    # Not kept (retain=False): an emit reaches the run only while it
                    # waits, so the counts tell which emit delivered (exactly one must).
                    n = await self.client.emit(topic(run_id), {"for": run_id}, retain=False)
                except StemError as exc:
                    # Unknown outcome (NATS away): the count of that emit is lost.
                    self.errors[run_id] += 1
                    self.last_error = exc
                    continue
                self.emits += 1
                self.resumed[run_id] += n
                if run_id in self.delivered:
                    self.finished.add(run_id)
                elif n:
                    self.delivered.add(run_id)
            await anyio.sleep(interval)

    def check(self, seed: int) -> None:
        for run_id in self.plans:
            if self.errors[run_id]:
                assert self.resumed[run_id] <= 1, f"seed {seed}: {run_id} resumed twice"
            else:
                assert self.resumed[run_id] == 1, (
                    f"seed {seed}: emits to {run_id} resumed it {self.resumed[run_id]}x"
                )


# -- end states -----------------------------------------------------------------------------


async def wait_ended(
    client: stemd.App, count: int, timeout: float, what: str = "runs"
) -> dict[str, stemd.RunState]:
    """Wait until the store holds ``count`` runs and all have ended; return them."""
    runs: list[stemd.RunState] = []
    try:
        with anyio.fail_after(timeout):
            while True:
                runs = await client.list_runs(limit=1_000_000)
                if len(runs) >= count and all(r.status in TERMINAL for r in runs):
                    return {r.run_id: r for r in runs}
                await anyio.sleep(0.25)
    except TimeoutError:
        left = Counter(r.status.value for r in runs)
        stuck = [_describe(r) for r in runs if r.status not in TERMINAL][:10]
        raise AssertionError(
            f"{what}: not all ended in {timeout}s: {dict(left)}; e.g.\n" + "\n".join(stuck)
        ) from None


def _describe(state: stemd.RunState) -> str:
    return (
        f"{state.run_id} {state.workflow} {state.status.value} topic={state.wait_topic} "
        f"resume_at={state.resume_at} child={state.wait_child} updated={state.updated_at} "
        f"attempts={state.attempts} lease={state.lease_owner}/{state.lease_expires_at} "
        f"steps={list(state.checkpoints)}"
    )


async def check_runs(
    client: stemd.App,
    plans: list[Plan],
    ledger: Ledger,
    emitter: Emitter | None,
    seed: int,
    timeout: float,
) -> dict[str, int]:
    """Wait until every run has ended; assert each ended as it must, with its one child
    at most, and that each step ran as the ledger allows; return counts for the report."""
    children = sum(1 for p in plans if p.params.get("child"))
    states = await wait_ended(client, len(plans) + children, timeout)
    assert len(states) == len(plans) + children, f"seed {seed}: runs forked or lost"
    effects = ledger.check(seed)
    ok = ok_counts(effects)
    by_parent: dict[str, list[stemd.RunState]] = {}
    for state in states.values():
        if state.parent_run_id is not None:
            by_parent.setdefault(state.parent_run_id, []).append(state)
    expected_steps: set[tuple[str, str]] = set()
    for plan in plans:
        state = states[plan.run_id]
        assert state.status is stemd.RunStatus.COMPLETED, (
            f"seed {seed}: {plan.run_id} {state.status}: {state.error} {state.cancel_reason}"
        )
        assert state.result == plan.expected, (
            f"seed {seed}: {plan.run_id}: {state.result!r} != {plan.expected!r}"
        )
        expected_steps |= {(plan.run_id, s) for s in plan.steps()}
        kids = by_parent.pop(plan.run_id, [])
        assert len(kids) == (1 if plan.params.get("child") else 0), (
            f"seed {seed}: {plan.run_id} has {len(kids)} children"
        )
        for kid in kids:
            assert kid.status is stemd.RunStatus.COMPLETED
            assert kid.result == CHILD_RESULT
            expected_steps |= {(kid.run_id, s) for s in ("c1", "c2", "c3")}
        fails = plan.params["fails"]
        retried = "f3" if plan.workflow == "chaos.flow" else "flaky"
        tried = {a for (r, s, a, o) in effects if r == plan.run_id and s == retried}
        assert tried == set(range(1, fails + 2)), f"seed {seed}: {plan.run_id} tried {tried}"
        assert effects[(plan.run_id, retried, fails + 1, "ok")] >= 1
    assert not by_parent, f"seed {seed}: children of unknown parents {sorted(by_parent)}"
    assert set(ok) == expected_steps, (
        f"seed {seed}: steps missing {sorted(expected_steps - set(ok))[:5]}, "
        f"unexpected {sorted(set(ok) - expected_steps)[:5]}"
    )
    if emitter is not None:
        emitter.check(seed)
    return {
        "runs": len(states),
        "executions": sum(ok.values()),
        "repeated": sum(n - 1 for n in ok.values()),
    }
