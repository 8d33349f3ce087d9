"""Daemons on NATS (JetStream KV store, work-queue broker) under faults.

Hundreds of runs sleep, wait for events, retry failing steps and wait for children while:

- two daemons, one of them SIGKILLed at a random point in each cycle and restarted, then
  nats-server itself SIGKILLed and restarted mid-load;
- a 3-node cluster started from deploy/nats/cluster/n*.conf, with R3 streams and KV,
  whose KV stream leader is SIGKILLed mid-load and brought back.

Every run completes with its expected result, no run is forked, each event is delivered
once, and only steps interrupted by a fault run again.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

import stemd
from stemd.testing._nats import nats_server
from tests.chaos.cluster import nats_cluster, stream_cluster
from tests.chaos.harness import (
    MODULE,
    Daemon,
    Emitter,
    Ledger,
    Plan,
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
    import random
    from collections.abc import AsyncIterator

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(scale(300, 3600))]

LEASE = 3.0
BUCKET = "runs"


def store_url(url: str, replicas: int) -> str:
    """The KV store URL on ``url``, with ``replicas`` replicas and retries through failovers."""
    return f"{url}?bucket={BUCKET}&replicas={replicas}&timeout=2&retry_for=30"


def broker_url(url: str, replicas: int) -> str:
    """The broker URL on ``url``, with ``replicas`` replicas and retries through failovers."""
    return f"{url}?replicas={replicas}&ack_wait=2&timeout=2&publish_retry=30"


def nats_config(tmp: Path, name: str, url: str, replicas: int = 1) -> Path:
    """A ``stemd run`` config with the KV store, the broker and the API on ``url``."""
    return write_config(
        tmp / f"{name}.toml",
        modules=[MODULE],
        entry_points=False,
        store=store_url(url, replicas),
        broker=broker_url(url, replicas),
        nats=f"{url}?replicas={replicas}",
        lease=LEASE,
        concurrency=32,
        log_format="json",
        shutdown_grace=5.0,
    )


@contextlib.asynccontextmanager
async def client_app(url: str, replicas: int = 1) -> AsyncIterator[stemd.App]:
    """An App that starts, emits and inspects, and executes nothing."""
    async with stemd.App(
        store=store_url(url, replicas), broker=broker_url(url, replicas), workers=False
    ) as app:
        yield app


async def _done(emitter: Emitter) -> bool:
    return emitter.done


async def kill_point(rng: random.Random, effects: Path, spread: float = 1.0) -> None:
    """Return at a random moment once some more work has been done."""
    done = sum(read_effects(effects).values())

    async def progressed() -> bool:
        return sum(read_effects(effects).values()) > done

    with anyio.move_on_after(10):
        await wait_until(progressed, timeout=11)
    await anyio.sleep(rng.uniform(0.0, spread))


async def finish(
    client: stemd.App,
    plans: list[Plan],
    ledger: Ledger,
    emitter: Emitter,
    seed: int,
    timeout: float,
) -> dict[str, int]:
    """Wait for every run and the emitter to end, then check the runs; return the outcomes."""
    total = len(plans) + sum(1 for p in plans if p.params["child"])
    await wait_ended(client, total, timeout=timeout)
    await wait_until(_done, emitter, timeout=15, what="the emitter to finish")
    return await check_runs(client, plans, ledger, emitter, seed, timeout=5)


async def test_daemons_killed_one_at_a_time_then_nats_restarted(tmp_path: Path) -> None:
    """Daemons SIGKILLed in turn, nats-server restarted: every run completes once, correctly."""
    rng, seed = chaos_rng()
    cycles = scale(3, 20)
    effects = tmp_path / "effects"
    plans = make_plans(rng, scale(200, 500), effects, horizon=cycles * 3.0 + 4)
    ledger = Ledger(effects)
    started = time.monotonic()
    async with nats_server() as server:
        daemons = [
            Daemon(tmp_path, nats_config(tmp_path, name, server.url), name) for name in ("d1", "d2")
        ]
        try:
            async with anyio.create_task_group() as tg:
                for d in daemons:
                    tg.start_soon(d.start)
            async with client_app(server.url) as client:
                await start_plans(client, plans)
                emitter = Emitter(client, plans)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(emitter.run, started)
                    for cycle in range(cycles):
                        victim = daemons[cycle % 2]
                        await kill_point(rng, effects)
                        async with ledger.fault(client):
                            victim.kill()
                        await victim.start()
                    await kill_point(rng, effects)
                    in_flight = len(await client.list_runs(status="suspended", limit=10**6))
                    async with ledger.fault(client):
                        await server.restart(down_for=rng.uniform(0.2, 1.0))
                    report = await finish(
                        client, plans, ledger, emitter, seed, timeout=scale(120, 900)
                    )
                    tg.cancel_scope.cancel()
            for d in daemons:
                assert d.alive, f"{d.name} died:\n{d.stderr_tail()}"
                assert d.stop() == 0, d.stderr_tail()
        finally:
            for d in daemons:
                d.close()
    print(
        f"nats kills: seed={seed} cycles={cycles} suspended-at-nats-restart={in_flight} "
        f"{report} emits={emitter.emits} emit-errors={sum(emitter.errors.values())} "
        f"took={time.monotonic() - started:.1f}s"
    )
    assert in_flight > 0


async def test_r3_cluster_from_the_deploy_files_survives_its_leader_killed(
    tmp_path: Path,
) -> None:
    """The shipped R3 cluster loses its KV leader mid-load: every run completes once."""
    rng, seed = chaos_rng()
    effects = tmp_path / "effects"
    plans = make_plans(rng, scale(120, 400), effects, horizon=scale(12.0, 40.0))
    ledger = Ledger(effects)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="stemd-cluster-") as nodes_dir:
        async with nats_cluster(Path(nodes_dir)) as nodes:
            urls = {node.name: node.url for node in nodes}
            # Each daemon and the client know one node; they learn the others from it.
            daemons = [
                Daemon(tmp_path, nats_config(tmp_path, name, urls[node], replicas=3), name)
                for name, node in (("d1", "n1"), ("d2", "n2"))
            ]
            try:
                async with anyio.create_task_group() as tg:
                    for d in daemons:
                        tg.start_soon(d.start)
                async with client_app(urls["n3"], replicas=3) as client:
                    conn = client.store.conn  # type: ignore[attr-defined]
                    streams = ("KV_runs", "STEM_TASKS", "STEM_SUBMIT", "STEM_TASKS_TIMERS")
                    for stream in streams:
                        info = await conn.js_api(f"STREAM.INFO.{stream}", timeout=5)
                        assert info["config"]["num_replicas"] == 3, (stream, info["config"])
                    await start_plans(client, plans)
                    emitter = Emitter(client, plans)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(emitter.run, started)
                        await kill_point(rng, effects, spread=2.0)
                        leader_name = (await stream_cluster(conn, "KV_runs"))["leader"]
                        leader = next(n for n in nodes if n.name == leader_name)
                        async with ledger.fault(client):
                            leader.kill()
                            killed_at = time.monotonic()

                            async def new_leader() -> bool:
                                with contextlib.suppress(stemd.StemError):
                                    found = await stream_cluster(conn, "KV_runs")
                                    return found.get("leader") not in (None, leader_name)
                                return False

                            await wait_until(new_leader, timeout=30, what="a new leader")
                            elected = time.monotonic() - killed_at
                        await kill_point(rng, effects, spread=2.0)
                        await leader.start()

                        async def current() -> bool:
                            found = await stream_cluster(conn, "KV_runs")
                            replicas = found.get("replicas") or []
                            return len(replicas) == 2 and all(r.get("current") for r in replicas)

                        await wait_until(current, timeout=30, what="the old leader to catch up")
                        report = await finish(
                            client, plans, ledger, emitter, seed, timeout=scale(150, 900)
                        )
                        tg.cancel_scope.cancel()
                for d in daemons:
                    assert d.alive, f"{d.name} died:\n{d.stderr_tail()}"
                    assert d.stop() == 0, d.stderr_tail()
            finally:
                for d in daemons:
                    d.close()
    print(
        f"r3 cluster: seed={seed} killed={leader_name} new-leader-after={elected:.1f}s "
        f"{report} emits={emitter.emits} emit-errors={sum(emitter.errors.values())} "
        f"took={time.monotonic() - started:.1f}s"
    )
