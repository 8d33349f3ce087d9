"""The embedded daemon (SQLite store, in-process broker) SIGKILLed at random points, cycle
after cycle, while hundreds of runs sleep, wait for events, retry failing steps and wait
for children: after the last restart every run reaches its end state, and no step whose
checkpoint was committed ever runs again."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import pytest

import stemd
from tests.chaos.harness import (
    MODULE,
    Daemon,
    Emitter,
    Ledger,
    chaos_rng,
    check_runs,
    make_plans,
    read_effects,
    scale,
    start_plans,
    wait_ended,
)
from tests.helpers import wait_until
from tests.integration.daemon_proc import write_config

if TYPE_CHECKING:
    from pathlib import Path

RUNS = scale(300, 1000)
CYCLES = scale(4, 25)
LEASE = 2.0

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(scale(240, 3600))]


def sqlite_config(tmp: Path, db: Path, **extra: object) -> Path:
    """A ``stemd run`` config on ``db`` with the chaos workflows."""
    keys: dict[str, object] = {
        "modules": [MODULE],
        "entry_points": False,
        "store": f"sqlite:///{db}",
        "lease": LEASE,
        "sweep_interval": 0.2,
        "log_format": "json",
        "shutdown_grace": 5.0,
    }
    keys.update(extra)
    return write_config(tmp / "stemd.toml", **keys)


async def test_sigkill_cycles_lose_no_run_and_rerun_no_committed_step(tmp_path: Path) -> None:
    """SIGKILLs at random points lose no run, and only interrupted steps run again."""
    rng, seed = chaos_rng()
    db = tmp_path / "stemd.db"
    effects = tmp_path / "effects"
    plans = make_plans(rng, RUNS, effects, horizon=CYCLES * 2.0)
    daemon = Daemon(tmp_path, sqlite_config(tmp_path, db))
    ledger = Ledger(effects)
    in_flight: list[int] = []
    started = time.monotonic()
    try:
        async with stemd.App(store=f"sqlite:///{db}", workers=False) as client:
            await start_plans(client, plans)
            emitter = Emitter(client, plans)
            async with anyio.create_task_group() as tg:
                tg.start_soon(emitter.run, started)
                for _ in range(CYCLES):
                    await daemon.start()
                    done = sum(read_effects(effects).values())

                    async def progressed(done: int = done) -> bool:
                        return sum(read_effects(effects).values()) > done

                    # Kill at a random point once the daemon has done some work.
                    with anyio.move_on_after(10):
                        await wait_until(progressed, timeout=11)
                    await anyio.sleep(rng.uniform(0.0, 1.0))
                    async with ledger.fault(client):
                        daemon.kill()
                    live = await client.list_runs(status="running", limit=100_000)
                    live += await client.list_runs(status="suspended", limit=100_000)
                    live += await client.list_runs(status="pending", limit=100_000)
                    in_flight.append(len(live))
                await daemon.start()
                total = len(plans) + sum(1 for p in plans if p.params["child"])
                await wait_ended(client, total, timeout=scale(90, 600))
                await wait_until(_done, emitter, timeout=10, what="the emitter to finish")
                tg.cancel_scope.cancel()
            report = await check_runs(client, plans, ledger, emitter, seed, timeout=5)
        assert daemon.stop() == 0, daemon.stderr_tail()
    finally:
        daemon.close()
    print(
        f"sqlite kills: seed={seed} cycles={CYCLES} runs-in-flight-at-kills={in_flight} "
        f"{report} emits={emitter.emits} took={time.monotonic() - started:.1f}s"
    )
    assert in_flight[0] >= RUNS // 2, in_flight


async def _done(emitter: Emitter) -> bool:
    return emitter.done
