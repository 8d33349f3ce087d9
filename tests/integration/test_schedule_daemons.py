"""Schedules served by two real daemons sharing a store (issue 13's done-when): one is
SIGKILLed right after a tick, and every tick of an every-second schedule is still started
exactly once, on SQLite and on NATS JetStream."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

import stemd
from tests.integration.daemon_proc import DaemonProcess, NotifyListener, daemon_config, wait_file

if TYPE_CHECKING:
    from pathlib import Path

    from stemd.testing._nats import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]

PREFIX = "tick-"


def _config(tmp_path: Path, effects: Path, **keys: str) -> Path:
    """The daemons' config: the test workflows, a short lease, and an every-second
    schedule of one step that records its run id in ``effects``."""
    path = daemon_config(tmp_path, lease=2.0, shutdown_grace=0.0, **keys)
    params = json.dumps({"n": 1, "file": str(effects), "sleep": 0})
    path.write_text(
        path.read_text()
        + "\n[[schedules]]\n"
        + 'name = "tick"\nworkflow = "test.steps"\ncron = "* * * * * *"\n'
        + 'overlap = "allow"\ncatch_up = "all"\n'
        + f"params = {_inline(params)}\n"
    )
    return path


def _inline(params_json: str) -> str:
    items = json.loads(params_json)
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in items.items()) + " }"


def _tick(run_id: str) -> datetime:
    return datetime.strptime(run_id[len(PREFIX) :], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def _effect_lines(effects: Path) -> list[str]:
    return effects.read_text().splitlines() if effects.exists() else []


def _wait_for_ticks(effects: Path, count: int) -> None:
    """Wait until the steps of ``count`` tick runs have run."""
    wait_file(effects, lambda lines: len({line.split()[0] for line in lines}) >= count)


async def _tick_runs(store: str) -> list[stemd.RunState]:
    async with stemd.App(store=store, workers=False) as app:
        runs = await app.list_runs(workflow="test.steps", limit=10_000)
    return [r for r in runs if r.run_id.startswith(PREFIX)]


async def _two_daemons_one_killed(tmp_path: Path, store: str, **keys: str) -> None:
    effects = tmp_path / "effects.txt"
    config = _config(tmp_path, effects, store=store, **keys)
    daemons: list[DaemonProcess] = []
    listeners = [NotifyListener(tmp_path, abstract=True) for _ in range(2)]
    try:
        for listener in listeners:
            daemons.append(DaemonProcess(tmp_path, config, listener))
        for listener in listeners:
            listener.wait_for("READY=1")
        _wait_for_ticks(effects, 3)
        # Right after a tick, while both daemons deal with it: SIGKILL one.
        seen = len(_effect_lines(effects))
        _wait_for_ticks(effects, seen + 1)
        killed_at = datetime.now(UTC)
        daemons[0].signal(signal.SIGKILL)
        assert daemons[0].wait() == -signal.SIGKILL
        _wait_for_ticks(effects, seen + 4)
        daemons[1].signal(signal.SIGTERM)
        assert daemons[1].wait() == 0, daemons[1].stderr[-2000:]
    finally:
        for daemon in daemons:
            daemon.kill()
        for listener in listeners:
            listener.close()
    runs = await _tick_runs(store)
    ticks = sorted(_tick(r.run_id) for r in runs)
    assert len(ticks) == len(set(ticks))
    expected = [ticks[0] + timedelta(seconds=i) for i in range(len(ticks))]
    assert ticks == expected, "a tick was skipped"
    assert ticks[-1] >= killed_at + timedelta(seconds=2), "no tick after the kill"
    # Each tick's run took the schedule's params, and only tick runs ran.
    assert all(r.params == {"n": 1, "file": str(effects), "sleep": 0} for r in runs)
    assert {line.split()[0] for line in _effect_lines(effects)} <= {r.run_id for r in runs}


async def test_two_sqlite_daemons_start_every_tick_once_across_a_sigkill(tmp_path: Path) -> None:
    """Two daemons on one SQLite file with an every-second schedule: after one is
    SIGKILLed mid-tick, the ticks form an unbroken run of seconds, each started once."""
    await _two_daemons_one_killed(tmp_path, f"sqlite:///{tmp_path / 'stemd.db'}")


async def test_two_nats_daemons_start_every_tick_once_across_a_sigkill(
    tmp_path: Path, nats: NatsServer
) -> None:
    """The same on a JetStream KV store and broker."""
    await _two_daemons_one_killed(tmp_path, nats.url, broker=nats.url)
