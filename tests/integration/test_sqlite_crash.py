"""Crash safety of the SQLite store with real processes: a daemon SIGKILLed in the middle
of a step, or in the middle of a burst of commits, loses nothing, forks nothing and
leaves nothing stuck once a new daemon takes over."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

import stemd
from stemd._store.sqlite_schema import RUN_COLUMNS, record_from_row
from tests.helpers import wait_until
from tests.integration.sqlite_daemon import BURST_STEPS, CRASH_STEPS

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DAEMON = Path(__file__).with_name("sqlite_daemon.py")
LEASE = 1.0


class Daemon:
    """One daemon process on the test's database."""

    def __init__(self, tmp: Path, name: str, *, block: bool = False, lease: float = LEASE) -> None:
        self.ready = tmp / f"{name}.ready"
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        args = [sys.executable, str(DAEMON), str(tmp / "stemd.db"), str(tmp / "effects")]
        args += [str(self.ready), "--lease", str(lease), "--name", name]
        if block:
            args.append("--block")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    async def wait_ready(self) -> None:
        async def ready() -> bool:
            assert self.proc.poll() is None, f"daemon exited: {self.proc.returncode}"
            return self.ready.exists()

        await wait_until(ready, timeout=20, what="the daemon to serve")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        self.log.close()


@contextmanager
def daemons() -> Iterator[list[Daemon]]:
    """A list to add daemons to; each is stopped on exit."""
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for daemon in started:
            daemon.stop()


def effect_lines(tmp: Path) -> list[list[str]]:
    """The side-effect file's lines: run id, step, daemon name."""
    path = tmp / "effects"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def effects(tmp: Path) -> Counter[tuple[str, str]]:
    """How many times each (run, step) started, from the side-effect file."""
    return Counter((run_id, step) for run_id, step, _ in effect_lines(tmp))


def checkpointed(db_path: Path) -> set[tuple[str, str]]:
    """The (run, step) pairs whose checkpoint is committed."""
    db = sqlite3.connect(db_path)
    try:
        return {(r, n) for r, n in db.execute("SELECT run_id, name FROM checkpoints")}
    finally:
        db.close()


def statuses(db_path: Path) -> Counter[str]:
    """How many runs the database holds in each status."""
    db = sqlite3.connect(db_path)
    try:
        return Counter(s for (s,) in db.execute("SELECT status FROM runs"))
    finally:
        db.close()


async def test_sigkill_mid_step_then_a_new_daemon_finishes_every_run(tmp_path: Path) -> None:
    """SIGKILL while steps run: completed steps never run again, the interrupted ones run
    exactly once more, and a new daemon completes every run."""
    db_path = tmp_path / "stemd.db"
    url = f"sqlite:///{db_path}"
    plan = {f"free{i}": None for i in range(8)}
    plan |= {f"first{i}": "s1" for i in range(8)}
    plan |= {f"last{i}": "s3" for i in range(8)}
    with daemons() as running:
        first = Daemon(tmp_path, "first", block=True)
        running.append(first)
        await first.wait_ready()
        async with stemd.App(store=url, workers=False) as client:
            for run_id, block in plan.items():
                await client.start_workflow("crash.flow", {"block": block}, run_id=run_id)

            async def all_in_place() -> bool:
                seen = effects(tmp_path)
                done = await client.list_runs(status="completed", limit=100)
                return len(done) == 8 and all(
                    seen[(r, b)] == 1 for r, b in plan.items() if b is not None
                )

            await wait_until(all_in_place, timeout=20, what="runs blocked in s1 and s3")
            first.kill()
            before = effects(tmp_path)
            committed = checkpointed(db_path)
            assert statuses(db_path) == {"completed": 8, "running": 16}

            second = Daemon(tmp_path, "second")
            running.append(second)
            for run_id in plan:
                result = await client.wait_for_completion(run_id, timeout=30)
                assert result.is_completed, result
                assert result.value == "s3-ok"
        assert statuses(db_path) == {"completed": 24}

    after = effects(tmp_path)
    for run_id, block in plan.items():
        for step in CRASH_STEPS:
            key = (run_id, step)
            if key in committed:
                assert after[key] == 1, f"{key} completed before the kill but ran {after[key]}x"
            elif step == block:
                assert before[key] == 1, f"{key} ran {before[key]}x before the kill"
                assert after[key] == 2, f"{key} ran {after[key]}x"
            else:
                assert after[key] == 1, f"{key} ran {after[key]}x"


async def test_sigkill_during_a_burst_of_commits_loses_and_corrupts_nothing(
    tmp_path: Path,
) -> None:
    """SIGKILL while the writer commits a stream of batches: the file passes
    integrity_check, every started run is there and consistent, and a new daemon
    completes them all with each step run at most twice."""
    db_path = tmp_path / "stemd.db"
    url = f"sqlite:///{db_path}"
    runs = [f"burst{i:05d}" for i in range(4000)]
    with daemons() as running:
        first = Daemon(tmp_path, "first")
        running.append(first)
        await first.wait_ready()
        async with stemd.App(store=url, workers=False) as client:

            async def start(chunk: list[str]) -> None:
                for run_id in chunk:
                    await client.start_workflow("burst.flow", run_id=run_id)

            async def busy() -> bool:
                return statuses(db_path)["completed"] >= 300

            async with anyio.create_task_group() as tg:
                for i in range(16):
                    tg.start_soon(start, runs[i::16])
                # Killed while runs are still being started and executed; the starts
                # (this process) go on and must all be there afterwards.
                await wait_until(busy, timeout=30, what="300 completed runs")
                first.kill()

            db = sqlite3.connect(db_path)
            try:
                assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
                rows = db.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs").fetchall()
                names: dict[str, list[str]] = {}
                for run_id, name in db.execute("SELECT run_id, name FROM checkpoints ORDER BY seq"):
                    names.setdefault(run_id, []).append(name)
            finally:
                db.close()
            records = {rec.run_id: rec for rec in map(record_from_row, rows)}
            assert sorted(records) == runs
            completed = [r for r in records.values() if r.status is stemd.RunStatus.COMPLETED]
            assert len(completed) < len(runs), "the kill came after the burst"
            for rec in records.values():
                done = names.get(rec.run_id, [])
                assert done == list(BURST_STEPS[: len(done)]), (rec.run_id, done)
                if rec.status is stemd.RunStatus.COMPLETED:
                    assert done == list(BURST_STEPS)
                    assert rec.result == b'"b4-ok"'
                else:
                    assert rec.status in (stemd.RunStatus.PENDING, stemd.RunStatus.RUNNING)
                    assert len(done) < len(BURST_STEPS)
            committed = {(r, n) for r, ns in names.items() for n in ns}

            second = Daemon(tmp_path, "second")
            running.append(second)

            async def all_completed() -> bool:
                return statuses(db_path) == {"completed": len(runs)}

            await wait_until(all_completed, timeout=90, what="every run to complete")

    after = effects(tmp_path)
    for run_id in runs:
        for step in BURST_STEPS:
            key = (run_id, step)
            limit = 1 if key in committed else 2
            assert 1 <= after[key] <= limit, f"{key} ran {after[key]}x"


async def test_two_daemons_share_one_file_and_run_each_step_once(tmp_path: Path) -> None:
    """Two daemon processes on one SQLite file share the runs: every run completes, both
    daemons work, and no step runs twice."""
    db_path = tmp_path / "stemd.db"
    runs: list[str] = []
    with daemons() as running:
        for name in ("one", "two"):
            # A long lease: on this loaded machine a late renewal must not hand a live
            # run to the other daemon (that would be a legitimate second execution).
            daemon = Daemon(tmp_path, name, lease=30.0)
            running.append(daemon)
            await daemon.wait_ready()
        async with stemd.App(store=f"sqlite:///{db_path}", workers=False) as client:

            async def start(chunk: list[str]) -> None:
                for run_id in chunk:
                    await client.start_workflow("burst.flow", run_id=run_id)

            async def all_completed() -> bool:
                return statuses(db_path) == {"completed": len(runs)}

            # A round of 400 runs takes about half a second: on a loaded machine one
            # daemon may finish a round before the other has looked (it polls every
            # 100 ms). Rounds go on until both have worked, five at most.
            for round_ in range(5):
                batch = [f"shared{round_}-{i:04d}" for i in range(400)]
                runs.extend(batch)
                async with anyio.create_task_group() as tg:
                    for i in range(8):
                        tg.start_soon(start, batch[i::8])
                await wait_until(all_completed, timeout=60, what="every run to complete")
                if {name for _, _, name in effect_lines(tmp_path)} == {"one", "two"}:
                    break
    lines = effect_lines(tmp_path)
    counts = Counter((run_id, step) for run_id, step, _ in lines)
    assert set(counts) == {(r, s) for r in runs for s in BURST_STEPS}
    assert set(counts.values()) == {1}
    assert {name for _, _, name in lines} == {"one", "two"}
