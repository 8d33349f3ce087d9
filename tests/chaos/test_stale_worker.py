"""A stale worker: a daemon frozen with SIGSTOP in the middle of steps, past its lease,
while another daemon takes its runs over and finishes them; resumed with SIGCONT, it
commits nothing (its writes are refused by the fencing token) and forks no run."""

from __future__ import annotations

import contextlib
import json
import signal
from typing import TYPE_CHECKING

import pytest

import stemd
from stemd.testing._nats import nats_server
from tests.chaos.harness import MODULE, Daemon, read_effects, scale
from tests.helpers import wait_until
from tests.integration.daemon_proc import write_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(scale(120, 600))]

LEASE = 1.0
HOLD = 2.0
RUNS = scale(4, 40)


@contextlib.asynccontextmanager
async def backend(kind: str, tmp: Path) -> AsyncIterator[tuple[Path, str, str | None]]:
    """A daemon config, the client's store URL and broker URL, for ``kind``."""
    keys: dict[str, object] = {
        "modules": [MODULE],
        "entry_points": False,
        "lease": LEASE,
        "log_format": "json",
        "shutdown_grace": 5.0,
        "concurrency": max(RUNS, 4),
    }
    if kind == "sqlite":
        store = f"sqlite:///{tmp / 'stemd.db'}"
        keys |= {"store": store, "sweep_interval": 0.2}
        yield write_config(tmp / "stemd.toml", **keys), store, None
        return
    async with nats_server() as server:
        store = f"{server.url}?bucket=runs&timeout=2&retry_for=30"
        broker = f"{server.url}?ack_wait=1&timeout=2&publish_retry=30"
        keys |= {"store": store, "broker": broker, "nats": server.url, "sweep_interval": 0.5}
        yield write_config(tmp / "stemd.toml", **keys), store, broker


def lease_losses(daemon: Daemon) -> set[str]:
    """The runs whose slice ``daemon`` abandoned because its lease was lost."""
    out = set()
    assert daemon.proc is not None
    for line in (daemon.proc.stdout + daemon.proc.stderr).splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("event") == "lease lost; abandoning the slice":
                out.add(entry["run_id"])
    return out


@pytest.mark.parametrize("kind", ["sqlite", "nats"])
async def test_a_paused_daemon_past_its_lease_commits_nothing(kind: str, tmp_path: Path) -> None:
    """A daemon paused mid-step past its lease, then resumed, commits nothing and forks no run."""
    effects = tmp_path / "effects"
    ids = [f"stale{i}" for i in range(RUNS)]
    async with backend(kind, tmp_path) as (config, store, broker):
        stale = Daemon(tmp_path, config, "stale")
        fresh = Daemon(tmp_path, config, "fresh")
        try:
            await stale.start()
            async with stemd.App(store=store, broker=broker, workers=False) as client:
                for run_id in ids:
                    params = {"file": str(effects), "hold": HOLD}
                    await client.start_workflow("chaos.stale", params, run_id=run_id)

                async def all_held() -> bool:
                    seen = read_effects(effects)
                    return all(seen[(r, "hold", 1, "start")] == 1 for r in ids)

                await wait_until(all_held, timeout=20, what="every run in its step")
                stale.send(signal.SIGSTOP)
                await fresh.start()
                ended = {}
                for run_id in ids:
                    result = await client.wait_for_completion(run_id, timeout=30)
                    assert result.is_completed, result
                    assert result.value == {"hold": fresh.pid, "after": fresh.pid}
                    ended[run_id] = result.state

                stale.send(signal.SIGCONT)

                async def all_abandoned() -> bool:
                    return lease_losses(stale) >= set(ids)

                await wait_until(all_abandoned, timeout=20, what="the stale slices to end")
                for run_id in ids:
                    assert await client.get_run(run_id) == ended[run_id], run_id
                assert stale.alive, stale.stderr_tail()
            assert stale.stop() == 0, stale.stderr_tail()
            assert fresh.stop() == 0, fresh.stderr_tail()
        finally:
            stale.close()
            fresh.close()
    lines = [line.split() for line in effects.read_text().splitlines()]
    for run_id in ids:
        mine = [(step, outcome, int(pid)) for r, step, _a, outcome, pid in lines if r == run_id]
        by_stale = [(s, o) for s, o, pid in mine if pid == stale.pid]
        by_fresh = [(s, o) for s, o, pid in mine if pid == fresh.pid]
        assert by_fresh == [("hold", "start"), ("hold", "ok"), ("after", "ok")], mine
        # The stale step may finish its own work (at least once), nothing after it.
        assert by_stale in ([("hold", "start")], [("hold", "start"), ("hold", "ok")]), mine
