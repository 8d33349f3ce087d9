"""Dependencies going away under load: nats-server killed for minutes, the store's server
killed while the broker stays, the SQLite disk filled up then freed.

Each time the daemon must stay up, report itself degraded (``/readyz`` answers 503,
``STATUS=degraded...``), stop claiming, come back by itself when the dependency returns,
and finish every run; the same process then serves new work. A crash of an actor during an
outage is a failure even if the restart budget holds (the log says so).

The NATS and store outages last ``STEMD_OUTAGE_SECONDS`` (default 40 s, see ``OUTAGE``).
The 5-minute figure of the issue is measured by hand::

    STEMD_OUTAGE_SECONDS=300 pytest tests/chaos/test_outages.py -k nats_outage -s
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd.testing._nats import nats_server
from tests.chaos.harness import (
    MODULE,
    Daemon,
    Emitter,
    Ledger,
    chaos_rng,
    check_runs,
    make_plans,
    read_effects,
    start_plans,
)
from tests.helpers import wait_until
from tests.integration.daemon_proc import write_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

# The daemons here run with a restart budget of one crash per minute (BUDGET). The old
# supervisor spent its budget on outages: with these store settings (timeout=2,
# retry_for=5) the timer actor failed about 9 s into an outage of NATS or of the store
# alone and every ~20 s after, so the old daemon with BUDGET exited at its second failure,
# measured 29 s (NATS) and 31 s (store) after the kill. 40 s is past that with some margin
# for a loaded machine: a daemon that outlives it does not spend its budget on outages.
# (The default budget, 5 crashes a minute, was never spent at that pace: the "crashed" log
# check below is what catches an actor failing on an outage, ~9 s in.)
OUTAGE = float(os.environ.get("STEMD_OUTAGE_SECONDS") or 40.0)
BUDGET = {"max_restarts": 1, "window": 60.0}

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(OUTAGE + 240)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def readyz(port: int) -> tuple[int, str]:
    """``GET /readyz`` on the daemon's metrics endpoint: (status code, body)."""
    with anyio.fail_after(5):
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(b"GET /readyz HTTP/1.0\r\n\r\n")
            data = b""
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    data += await stream.receive()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def wait_ready(port: int, ready: bool, timeout: float, names: str | None = None) -> str:
    """Wait until ``/readyz`` says ``ready`` (200) or not (503), its body naming ``names``
    if given (a NATS outage may first show as the store's); return its body."""
    body = ""

    async def check() -> bool:
        nonlocal body
        code, body = await readyz(port)
        return (code == 200) == ready and (names is None or names in body)

    await wait_until(check, timeout=timeout, what=f"/readyz ready={ready} (last: {body!r})")
    return body


async def stay_alive(daemon: Daemon, seconds: float) -> None:
    """Check every half second for ``seconds`` that the daemon has not exited."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        assert daemon.alive, f"{daemon.name} exited during the outage:\n{daemon.stderr_tail()}"
        await anyio.sleep(min(0.5, left))


def log_events(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's JSON log lines so far."""
    assert daemon.proc is not None
    out = []
    for line in daemon.proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def check_outage_logs(daemon: Daemon, dependency: str) -> None:
    """No actor crashed, and the state changes were logged once each, not per attempt."""
    events = log_events(daemon)
    crashed = [e for e in events if "crashed" in str(e.get("event"))]
    assert not crashed, f"actors crashed during the outage: {crashed[:3]}"
    degraded = [e for e in events if e.get("event") == "degraded"]
    recovered = [e for e in events if e.get("event") == "recovered"]
    assert any(dependency in str(e.get("dependency")) for e in degraded), degraded
    assert recovered, "no 'recovered' line"
    assert len(degraded) <= 4, f"degraded logged per attempt: {len(degraded)} lines"


async def _done(emitter: Emitter) -> bool:
    return emitter.done


async def progress(effects: Path) -> None:
    """Return once some more steps have run."""
    done = sum(read_effects(effects).values())

    async def progressed() -> bool:
        return sum(read_effects(effects).values()) > done

    await wait_until(progressed, timeout=30, what="progress")


async def ride_out(
    daemon: Daemon,
    port: int,
    seconds: float,
    fail: Callable[[], object],
    restore: Callable[[], Awaitable[object]],
    *,
    names: str | None = None,
) -> float:
    """``fail()`` a dependency for ``seconds``: the daemon reports itself not ready (its
    ``/readyz`` body naming ``names``, if given) and stays up throughout; once
    ``restore()`` it is ready again. Return how long after the restore it said so."""
    fail()
    down = time.monotonic()
    await wait_ready(port, ready=False, timeout=30, names=names)
    await stay_alive(daemon, seconds - (time.monotonic() - down))
    await restore()
    back = time.monotonic()
    await wait_ready(port, ready=True, timeout=60)
    return time.monotonic() - back


async def served_through(
    daemon: Daemon, pid: int, client: stemd.App, dependency: str, run_id: str, file: Path
) -> None:
    """After the outage the same daemon process is up and takes new work (a run started now
    completes), and its log shows the outage without a crash."""
    params = {"file": str(file), "sleep": 0.01}
    await client.start_workflow("chaos.child", params, run_id=run_id)
    state = await client.wait_for_completion(run_id, timeout=60)
    assert state.status is stemd.RunStatus.COMPLETED, state
    assert daemon.alive
    assert daemon.pid == pid
    check_outage_logs(daemon, dependency)


# -- NATS ---------------------------------------------------------------------------------


def nats_store(url: str) -> str:
    """The KV store on ``url``, retrying each operation only briefly."""
    return f"{url}?bucket=runs&timeout=2&retry_for=5"


def nats_broker(url: str) -> str:
    """The work-queue broker on ``url``, retrying each publish only briefly."""
    return f"{url}?ack_wait=3&timeout=2&publish_retry=5"


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[Daemon]:
    """``daemon`` started (READY=1) for the block, killed if still running after it."""
    try:
        await daemon.start()
        yield daemon
    finally:
        daemon.close()


async def test_nats_outage_degrades_and_recovers_without_exiting(tmp_path: Path) -> None:
    """nats-server killed for minutes under load: the daemon stays up degraded, then finishes."""
    rng, seed = chaos_rng()
    effects = tmp_path / "effects"
    plans = make_plans(rng, 60, effects, horizon=16.0)
    ledger = Ledger(effects)
    port = _free_port()
    started = time.monotonic()
    async with nats_server() as server:
        config = write_config(
            tmp_path / "d.toml",
            modules=[MODULE],
            entry_points=False,
            store=nats_store(server.url),
            broker=nats_broker(server.url),
            nats=server.url,
            lease=3.0,
            concurrency=16,
            log_format="json",
            metrics_address=f"127.0.0.1:{port}",
            restart=BUDGET,
        )
        async with running(Daemon(tmp_path, config, "d")) as daemon:
            pid = daemon.pid
            async with stemd.App(
                store=nats_store(server.url), broker=nats_broker(server.url), workers=False
            ) as client:
                await start_plans(client, plans)
                emitter = Emitter(client, plans)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(emitter.run, started)
                    await progress(effects)
                    async with ledger.fault(client):
                        back = await ride_out(
                            daemon, port, OUTAGE, server.kill, server.start, names="nats"
                        )
                    total = len(plans) + sum(1 for p in plans if p.params["child"])
                    report = await check_runs(client, plans, ledger, None, seed, timeout=180)
                    assert report["runs"] == total
                    await wait_until(_done, emitter, timeout=30, what="the emitter to finish")
                    tg.cancel_scope.cancel()
                await served_through(
                    daemon, pid, client, "nats", "after-outage", tmp_path / "after"
                )
            assert daemon.starts == 1
            assert daemon.notify is not None
            statuses = [m for m in daemon.notify.drain() if "STATUS=degraded" in m]
            assert statuses, "no STATUS=degraded sent to systemd"
            assert daemon.stop() == 0, daemon.stderr_tail()
    print(
        f"nats outage: seed={seed} outage={OUTAGE:.0f}s ready-again-after={back:.1f}s "
        f"{report} took={time.monotonic() - started:.1f}s"
    )


async def test_store_outage_with_the_broker_up(tmp_path: Path) -> None:
    """The store's server killed while the broker's stays: degraded, no claims, then done."""
    rng, seed = chaos_rng()
    effects = tmp_path / "effects"
    plans = make_plans(rng, 40, effects, horizon=10.0)
    for i, p in enumerate(plans):  # no emitter here: nothing waits for events
        plans[i] = type(p)(p.run_id, p.workflow, {**p.params, "event": "none"}, p.emit_after)
    ledger = Ledger(effects)
    port = _free_port()
    async with nats_server() as store_server, nats_server() as broker_server:
        config = write_config(
            tmp_path / "d.toml",
            modules=[MODULE],
            entry_points=False,
            store=nats_store(store_server.url),
            broker=nats_broker(broker_server.url),
            nats=broker_server.url,
            lease=3.0,
            concurrency=16,
            log_format="json",
            metrics_address=f"127.0.0.1:{port}",
            restart=BUDGET,
        )
        async with running(Daemon(tmp_path, config, "d")) as daemon:
            pid = daemon.pid
            async with stemd.App(
                store=nats_store(store_server.url),
                broker=nats_broker(broker_server.url),
                workers=False,
            ) as client:
                await start_plans(client, plans)
                await progress(effects)
                async with ledger.fault(client):
                    await ride_out(daemon, port, OUTAGE, store_server.kill, store_server.start)
                await check_runs(client, plans, ledger, None, seed, timeout=120)
                await served_through(
                    daemon, pid, client, "store", "after-store-outage", tmp_path / "after"
                )
            assert daemon.stop() == 0, daemon.stderr_tail()


# -- a full disk ----------------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(size: str = "16m") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` mounted for the block, unmounted after."""
    with tempfile.TemporaryDirectory(prefix="stemd-tmpfs-") as mount:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mount], check=True)
        try:
            yield Path(mount)
        finally:
            subprocess.run(["umount", "-l", mount], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full, to the last block."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        size = 1 << 16
        while size >= 512:
            try:
                os.write(fd, b"\0" * size)
            except OSError:
                size //= 2
    finally:
        os.close(fd)


async def test_full_disk_degrades_then_recovers_once_freed(tmp_path: Path) -> None:
    """SQLite on a tmpfs filled up: the daemon stays up degraded; freed, every run ends."""
    rng, seed = chaos_rng()
    effects = tmp_path / "effects"
    plans = make_plans(rng, 40, effects, horizon=10.0)
    for i, p in enumerate(plans):
        plans[i] = type(p)(p.run_id, p.workflow, {**p.params, "event": "none"}, p.emit_after)
    ledger = Ledger(effects)
    port = _free_port()
    with small_tmpfs() as disk:
        db = disk / "stemd.db"
        config = write_config(
            tmp_path / "d.toml",
            modules=[MODULE],
            entry_points=False,
            store=f"sqlite:///{db}",
            lease=2.0,
            sweep_interval=0.5,
            log_format="json",
            metrics_address=f"127.0.0.1:{port}",
        )
        async with running(Daemon(tmp_path, config, "d")) as daemon:
            pid = daemon.pid
            async with stemd.App(store=f"sqlite:///{db}", workers=False) as client:
                await start_plans(client, plans)
                await progress(effects)
                async with ledger.fault(client):
                    filler = disk / "filler"

                    async def free() -> None:
                        filler.unlink()

                    await ride_out(
                        daemon, port, 10.0, functools.partial(fill, filler), free, names="store"
                    )
                await check_runs(client, plans, ledger, None, seed, timeout=120)
                await served_through(
                    daemon, pid, client, "store", "after-disk-full", tmp_path / "after"
                )
            assert daemon.stop() == 0, daemon.stderr_tail()
