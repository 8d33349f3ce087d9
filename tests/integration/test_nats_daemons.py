"""Several daemon processes on one NATS: sharing runs, surviving a SIGKILLed daemon and a
restarted nats-server. Each daemon is tests/integration/nats_daemon.py in its own process;
its steps append one line per execution to a side-effect file."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

import stemd
from stemd._natsconn import open_connection
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from stemd.testing._nats import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DAEMON = Path(__file__).with_name("nats_daemon.py")
STEPS = ("one", "two", "three")


class Daemon:
    """One daemon process."""

    def __init__(self, url: str, effects: Path, name: str, *args: str) -> None:
        self.name = name
        self.log = effects.with_name(f"{name}.log")
        self.cmd = [sys.executable, str(DAEMON), url, str(effects), name, *args]
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log, "wb") as log:
            return subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=log)

    async def start(self) -> None:
        self.proc = self._spawn()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        with anyio.fail_after(30):
            line = await anyio.to_thread.run_sync(stdout.readline)
        assert line.strip() == b"READY", f"daemon {self.name} did not start:\n{self.tail()}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close()

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close()

    def _close(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.asynccontextmanager
async def daemons(url: str, effects: Path, *names: str, **opts: str) -> AsyncIterator[list[Daemon]]:
    """Daemon processes named ``names``, started together and stopped on exit."""
    args = [x for key, value in opts.items() for x in (f"--{key.replace('_', '-')}", value)]
    started = [Daemon(url, effects, name, *args) for name in names]
    try:
        async with anyio.create_task_group() as tg:
            for d in started:
                tg.start_soon(d.start)
        yield started
    finally:
        for d in started:
            d.stop()


@contextlib.asynccontextmanager
async def client(url: str) -> AsyncIterator[stemd.App]:
    """An App that starts and inspects runs and executes nothing."""
    store = f"{url}?bucket=runs&timeout=2&retry_for=30"
    async with stemd.App(store=store, broker=f"{url}?publish_retry=30", workers=False) as app:
        yield app


async def start_runs(app: stemd.App, workflow: str, count: int) -> list[str]:
    """Start ``count`` runs of ``workflow`` concurrently; return their ids."""
    ids = [f"run-{i:04d}" for i in range(count)]
    limit = anyio.Semaphore(32)

    async def start(run_id: str) -> None:
        async with limit:
            await app.start_workflow(workflow, run_id=run_id)

    async with anyio.create_task_group() as tg:
        for run_id in ids:
            tg.start_soon(start, run_id)
    return ids


async def wait_completed(app: stemd.App, count: int, timeout: float) -> None:
    """Wait until ``count`` runs are completed; fail after ``timeout`` seconds."""
    done = 0
    try:
        with anyio.fail_after(timeout):
            while True:
                done = len(await app.list_runs(status=stemd.RunStatus.COMPLETED, limit=10_000))
                if done >= count:
                    return
                await anyio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"only {done} of {count} runs completed in {timeout}s") from None


def count_lines(path: Path, text: str) -> int:
    """Lines of ``path`` containing ``text`` (0 while it does not exist)."""
    if not path.exists():
        return 0
    return sum(text in line for line in path.read_text().splitlines())


async def effect_lines(path: Path, text: str, count: int) -> bool:
    """Whether ``path`` has at least ``count`` lines containing ``text``."""
    return count_lines(path, text) >= count


def effects_by_run(path: Path) -> Iterator[tuple[str, list[tuple[str, str, float, float]]]]:
    """Each run's effects (step, daemon, start, end) from ``path``, in order of start."""
    runs: dict[str, list[tuple[str, str, float, float]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        run_id, step, daemon, start, end = line.split()
        runs[run_id].append((step, daemon, float(start), float(end)))
    for run_id, entries in sorted(runs.items()):
        yield run_id, sorted(entries, key=lambda e: e[2])


async def test_two_daemons_share_runs_each_step_exactly_once(
    nats: NatsServer, tmp_path: Path
) -> None:
    """Two daemons share 500 runs: every step runs exactly once, one daemon at a time."""
    effects = tmp_path / "effects.txt"
    async with daemons(nats.url, effects, "d1", "d2") as procs, client(nats.url) as app:
        ids = await start_runs(app, "quick.flow", 500)
        await wait_completed(app, 500, timeout=60)
        assert all(p.alive for p in procs)
    seen = dict(effects_by_run(effects))
    assert sorted(seen) == ids
    by_daemon: dict[str, int] = defaultdict(int)
    for run_id, entries in seen.items():
        assert [e[0] for e in entries] == list(STEPS), run_id
        for before, after in itertools.pairwise(entries):
            assert before[3] <= after[2], f"{run_id}: steps overlap"
        for entry in entries:
            by_daemon[entry[1]] += 1
    assert set(by_daemon) == {"d1", "d2"}, by_daemon


async def test_runs_of_a_killed_daemon_finish_on_the_other(
    nats: NatsServer, tmp_path: Path
) -> None:
    """A daemon SIGKILLed mid-step: its runs are finished by the other daemon."""
    effects = tmp_path / "effects.txt"
    async with (
        daemons(nats.url, effects, "victim", "survivor", concurrency="8") as (victim, survivor),
        client(nats.url) as app,
    ):
        ids = await start_runs(app, "slow.flow", 40)
        await wait_until(effect_lines, effects, " victim ", 1, timeout=20, what="victim steps")
        victim.kill()
        killed_at = len(effects.read_text().splitlines())
        await wait_completed(app, 40, timeout=60)
        assert survivor.alive
        for run_id in ids:
            state = await app.get_run(run_id)
            assert state is not None
            assert state.result == 3
    seen = dict(effects_by_run(effects))
    assert sorted(seen) == ids
    for run_id, entries in seen.items():
        steps = [e[0] for e in entries]
        assert set(steps) == set(STEPS), run_id
        # A step is done again only if the victim died between doing it and recording it.
        repeated = [s for s in STEPS if steps.count(s) > 1]
        assert len(repeated) <= 1, run_id
        for step in repeated:
            assert any(e[0] == step and e[1] == "victim" for e in entries), run_id
    lines = effects.read_text().splitlines()
    assert all(" victim " not in line for line in lines[killed_at:])
    assert any(" survivor " in line for line in lines[killed_at:])


async def test_runs_in_a_killed_daemons_lane_finish_on_the_other(
    nats: NatsServer, tmp_path: Path
) -> None:
    """Runs started through a daemon wait in its own lane, not in the work queue; killed
    with runs there, their prompts die with it, and the other daemon finishes every run
    (its sweeper finds them runnable in the store)."""
    effects = tmp_path / "effects.txt"
    ids = [f"lane-{i}" for i in range(6)]
    async with (
        daemons(nats.url, effects, "victim", concurrency="1") as [victim],
        client(nats.url) as app,
    ):
        conn = await open_connection(nats.url, name="starter")
        try:
            for run_id in ids:  # through the victim's API: it is the only daemon
                body = json.dumps({"workflow": "slow.flow", "run_id": run_id}).encode()
                reply = await conn.request("stem.api.start", body, timeout=10)
                assert b'"created":true' in reply.data, reply.data
            info = await conn.js_api("STREAM.INFO.STEM_TASKS")
        finally:
            await conn.close()
        assert info["state"]["last_seq"] < len(ids)  # the lane kept some from the stream
        await wait_until(effect_lines, effects, " victim ", 1, timeout=20, what="victim steps")
        victim.kill()
        async with daemons(nats.url, effects, "survivor") as [survivor]:
            await wait_completed(app, len(ids), timeout=60)
            assert survivor.alive
    assert sorted(dict(effects_by_run(effects))) == ids


async def test_daemons_reconnect_after_nats_restarts_mid_load(
    nats: NatsServer, tmp_path: Path
) -> None:
    """nats-server SIGKILLed and restarted mid-load: the daemons reconnect, finish all."""
    effects = tmp_path / "effects.txt"
    async with daemons(nats.url, effects, "d1", "d2") as procs, client(nats.url) as app:
        ids = await start_runs(app, "slow.flow", 150)
        await wait_until(effect_lines, effects, "", 60, timeout=20, what="60 steps done")
        await nats.restart(down_for=0.5)
        await wait_completed(app, 150, timeout=90)
        assert all(p.alive for p in procs), [p.tail() for p in procs]
    seen = dict(effects_by_run(effects))
    assert sorted(seen) == ids
    for run_id, entries in seen.items():
        assert {e[0] for e in entries} == set(STEPS), run_id
