"""A stemd daemon for the SQLite crash tests: runs an embedded App forever.

    python tests/integration/sqlite_daemon.py DB EFFECTS READY [--block] [--lease S]
        [--name NAME]

Every step execution appends one line ``<run_id> <step> <name>`` to EFFECTS and fsyncs it
before doing anything else. With ``--block``, a ``crash.flow`` step named by the run's
``block`` param then waits forever (the test SIGKILLs the daemon there). The daemon
creates the file READY once it serves. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import anyio
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import stemd

ARGS = argparse.Namespace(effects="", block=False, name="daemon")
CRASH_STEPS = ("s1", "s2", "s3")
BURST_STEPS = ("b1", "b2", "b3", "b4")


def effect(run_id: str, step: str) -> None:
    """Record one execution of ``step`` durably."""
    fd = os.open(ARGS.effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{run_id} {step} {ARGS.name}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def make_flow(name: str, steps: tuple[str, ...]) -> stemd.Flow:
    """A flow of ``steps``, each recording its effect and blocking if the run says so."""
    flow = stemd.Flow(name)

    def make_step(step: str) -> None:
        @flow.step(step)
        async def run(ctx: stemd.FlowContext) -> str:
            effect(ctx.run_id, step)
            if ARGS.block and (ctx.params or {}).get("block") == step:
                await anyio.sleep_forever()
            return f"{step}-ok"

    for step in steps:
        make_step(step)
    return flow


crash = make_flow("crash.flow", CRASH_STEPS)
burst = make_flow("burst.flow", BURST_STEPS)


async def main() -> None:
    """Run a daemon on a SQLite file from the command line; touch the ready file once it serves."""
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("effects")
    parser.add_argument("ready")
    parser.add_argument("--block", action="store_true")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--name", default="daemon")
    parser.parse_args(namespace=ARGS)
    async with stemd.App(
        store=f"sqlite:///{ARGS.db}",
        workflows=[crash, burst],
        options=stemd.AppOptions(timing=stemd.Timing(lease=ARGS.lease)),
        concurrency=ARGS.concurrency,
    ) as app:
        await anyio.Path(ARGS.ready).touch()
        await app.serve_forever()


if __name__ == "__main__":
    anyio.run(main)
