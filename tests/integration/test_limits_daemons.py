"""Flow control across daemon processes: two daemons on one store (a SQLite file, a NATS
cluster) never run more than 3 steps of a workflow limited to 3 at once, nor 2 of one
customer limited to 1, and when one is SIGKILLed mid-step the slots it held are freed by
the expiry of its lease: every run completes. A rate of 4 starts per second holds across
the two daemons too."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import IO, TYPE_CHECKING

import anyio
import pytest

import stemd
from tests.helpers import wait_until

if TYPE_CHECKING:
    from stemd.testing._nats import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

DAEMON = Path(__file__).with_name("limits_daemon.py")
RUNS = 24
CUSTOMERS = 6


def _spawn(url: str, effects: Path, name: str) -> subprocess.Popen[bytes]:
    log = effects.with_name(f"{name}.log")
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(DAEMON), url, str(effects), name],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    assert proc.stdout is not None
    # Log lines may come first (the App logs to stdout); READY says it serves.
    for _ in range(50):
        line = proc.stdout.readline()
        if line.strip() == b"READY" or not line:
            break
    assert line.strip() == b"READY", log.read_text()
    # Keep reading what it prints (its log): a full pipe would block the daemon's loop.
    out = effects.with_name(f"{name}.out")
    threading.Thread(target=_copy, args=(proc.stdout, out), daemon=True).start()
    return proc


def _copy(stream: IO[bytes], path: Path) -> None:
    with path.open("ab") as f, contextlib.suppress(ValueError, OSError):  # closed by _stop
        for line in stream:
            f.write(line)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def _in_steps(effects: Path) -> set[str]:
    """The daemons in a step now (started, not ended), by the effects file."""
    lines = [ln.split() for ln in effects.read_text().splitlines()]
    started = {(f[1], f[2]) for f in lines if f[0] == "start"}
    ended = {(f[1], f[2]) for f in lines if f[0] == "end"}
    return {name for name, _ in started - ended}


async def _working(effects: Path) -> bool:
    return bool(_in_steps(effects))


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        now += step
        most = max(most, now)
    return most


def _intervals(lines: list[str], killed: str, kill_time: float) -> dict[str, list[tuple]]:
    """Per customer, the (start, end) of every step execution; one of the killed daemon
    that never ended ends at the kill."""
    open_: dict[tuple[str, str], tuple[float, str]] = {}
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for line in lines:
        what, name, run_id, customer, at = line.split()
        if what == "start":
            open_[(name, run_id)] = (float(at), customer)
        else:
            start, _ = open_.pop((name, run_id))
            out[customer].append((start, float(at)))
    for (name, _), (start, customer) in open_.items():
        assert name == killed, "only the killed daemon leaves a step unfinished"
        out[customer].append((start, kill_time))
    return out


@pytest.mark.parametrize("kind", ["sqlite", "jetstream"])
async def test_limits_hold_across_daemons_and_survive_a_sigkill(
    kind: str, nats: NatsServer, tmp_path: Path
) -> None:
    """Two daemons, a limit of 3 at once and 1 per customer, one daemon SIGKILLed while
    its steps run: never more than 3 steps at once nor 2 of a customer, and every run
    completes (the dead daemon's slots come back when its lease expires)."""
    url = f"sqlite:///{tmp_path / 'limits.db'}" if kind == "sqlite" else nats.url
    effects = tmp_path / "effects.txt"
    effects.touch()
    a = _spawn(url, effects, "a")
    b = _spawn(url, effects, "b")
    try:
        async with stemd.App(store=url, workers=False) as client:
            ids = [
                await client.start_run(
                    "limits.work", {"file": str(effects), "customer": f"c{i % CUSTOMERS}"}
                )
                for i in range(RUNS)
            ]

            # Whichever daemon is in a step is killed (either may have taken every run).
            await wait_until(_working, effects, timeout=60, what="a daemon in a step")
            killed = sorted(_in_steps(effects))[0]
            victim = a if killed == "a" else b
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            kill_time = time.time()
            with anyio.fail_after(180):
                for run_id, _ in ids:
                    done = await client.wait_for_completion(run_id, timeout=180)
                    assert done.is_completed, done
    finally:
        _stop(a)
        _stop(b)
    by_customer = _intervals(effects.read_text().splitlines(), killed, kill_time)
    everything = [i for intervals in by_customer.values() for i in intervals]
    assert _most_at_once(everything) <= 3
    assert _most_at_once(everything) >= 2  # the limit, not chance, held them back
    for intervals in by_customer.values():
        assert _most_at_once(intervals) == 1
    finished = {ln.split()[2] for ln in effects.read_text().splitlines() if ln.startswith("end")}
    assert len(finished) == RUNS


@pytest.mark.parametrize("kind", ["sqlite", "jetstream"])
async def test_a_rate_limit_holds_across_daemons(
    kind: str, nats: NatsServer, tmp_path: Path
) -> None:
    """Two daemons, 4 starts per second: 16 runs all complete, never more than 4 starting
    in any window shorter than a second, so the last starts at least 3 s after the first."""
    url = f"sqlite:///{tmp_path / 'rated.db'}" if kind == "sqlite" else nats.url
    effects = tmp_path / "effects.txt"
    effects.touch()
    a = _spawn(url, effects, "a")
    b = _spawn(url, effects, "b")
    try:
        async with stemd.App(store=url, workers=False) as client:
            ids = [
                await client.start_run("limits.rated", {"file": str(effects)}) for _ in range(16)
            ]
            with anyio.fail_after(120):
                for run_id, _ in ids:
                    done = await client.wait_for_completion(run_id, timeout=120)
                    assert done.is_completed, done
    finally:
        _stop(a)
        _stop(b)
    lines = [ln.split() for ln in effects.read_text().splitlines()]
    starts = sorted(float(at) for what, _, _, _, at in lines if what == "start")
    assert len(starts) == 16
    for i in range(len(starts) - 4):
        assert starts[i + 4] - starts[i] > 0.9, starts  # a fifth start is a window later
    assert starts[-1] - starts[0] >= 2.7
