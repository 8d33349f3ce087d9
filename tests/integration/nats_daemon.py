"""A stemd daemon for the multi-process tests: runs an App on NATS until SIGTERM.

    python tests/integration/nats_daemon.py URL EFFECTS_FILE NAME [--lease S] [--ack-wait S]

Its workflows record every step execution as one line appended to EFFECTS_FILE:
``<run_id> <step> <daemon name> <start time> <end time>``. It prints READY once serving.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import anyio
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import stemd

ARGS = argparse.Namespace()


def effect(ctx: stemd.FlowContext, started: float) -> None:
    """Append the step's effect (run, step, daemon, start, end) to the effects file."""
    line = f"{ctx.run_id} {ctx.step_name} {ARGS.name} {started:.6f} {time.time():.6f}\n"
    fd = os.open(ARGS.effects, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def make_flow(name: str, pause: float) -> stemd.Flow:
    """A flow of steps one, two, three, each pausing ``pause`` seconds and recording its effect."""
    flow = stemd.Flow(name)

    async def step(ctx: stemd.FlowContext) -> int:
        started = time.time()
        if pause:
            await anyio.sleep(pause)
        effect(ctx, started)
        return int(ctx.previous_result or 0) + 1

    for step_name in ("one", "two", "three"):
        flow.step(step_name)(step)
    return flow


async def main() -> None:
    """Run a daemon on NATS from the command line; print READY once it serves."""
    # Logs go to stderr: stdout is for the READY line the test waits for.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("effects")
    parser.add_argument("name")
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--ack-wait", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.parse_args(namespace=ARGS)
    url = ARGS.url
    store = f"{url}?bucket=runs&timeout=2&retry_for=30"
    broker = f"{url}?ack_wait={ARGS.ack_wait}&timeout=2&publish_retry=30"
    workflows = [make_flow("quick.flow", 0.0), make_flow("slow.flow", 0.2)]
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with stemd.App(
            store=store,
            broker=broker,
            workflows=workflows,
            concurrency=ARGS.concurrency,
            options=stemd.AppOptions(
                nats=url,
                timing=stemd.Timing(lease=ARGS.lease, sweep_interval=1.0),
                owner=ARGS.name,
            ),
        ):
            print("READY", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    anyio.run(main)
