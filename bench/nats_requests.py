"""The NATS messages one workflow costs the daemon on the JetStream KV store and broker.

    python bench/nats_requests.py --runs 300

Starts a nats-server and, in this process, an App on the KV store and the JetStream
broker with the 3-step flow of bench/workflows.py; starts ``--runs`` runs at once and
waits for each to end (on the engine's own end-of-run events: no store reads), counting
every request (a message that waits for its reply) and every plain publish the App's
NATS connections send, by kind of subject. Prints the counts per workflow.

(In-process: no API request, no run events; it counts what the store and the broker
send.)
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

# A file of this folder is called nats.py: keep the folder off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import stemd  # noqa: E402
from bench.workflows import three_steps  # noqa: E402
from stemd._natsconn import connection  # noqa: E402
from stemd.testing._nats import NatsServer  # noqa: E402

_KINDS = [
    (re.compile(r"^\$KV\.[^.]+\.(\w+)\..*"), r"KV put \1.*"),
    (re.compile(r"^\$JS\.API\.DIRECT\.GET\.[^.]+\.\$KV\.[^.]+\.(\w+)\..*"), r"KV get \1.*"),
    (re.compile(r"^\$JS\.API\.([A-Z]+\.[A-Z]+)\..*"), r"$JS.API.\1"),
    (re.compile(r"^\$JS\.ACK\..*"), "$JS.ACK (a task's acknowledgement)"),
    (re.compile(r"^([a-z]+\.[a-z]+)\..*"), r"\1.* (a task)"),
]


def kind(subject: str) -> str:
    """The kind of ``subject``, for counting."""
    for pattern, name in _KINDS:
        if pattern.match(subject):
            return pattern.sub(name, subject)
    return subject


def count_messages(counts: collections.Counter[str]) -> None:
    """Count each request and publish of every connection in ``counts``."""
    request, publish = connection.CoreConnection._request, connection.CoreConnection.publish

    async def counted_request(self: Any, subject: str, *args: Any, **kwargs: Any) -> Any:
        counts[f"request  {kind(subject)}"] += 1
        return await request(self, subject, *args, **kwargs)

    async def counted_publish(self: Any, subject: str, *args: Any, **kwargs: Any) -> Any:
        counts[f"publish  {kind(subject)}"] += 1
        return await publish(self, subject, *args, **kwargs)

    connection.CoreConnection._request = counted_request  # type: ignore[method-assign]
    connection.CoreConnection.publish = counted_publish  # type: ignore[method-assign]


async def main(runs: int) -> None:
    counts: collections.Counter[str] = collections.Counter()
    count_messages(counts)
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(tmp)
        await server.start()
        try:
            url = server.url
            async with stemd.App(
                store=f"{url}?bucket=requests", broker=url, workflows=[three_steps], concurrency=64
            ) as app:

                async def one(run_id: str) -> None:
                    ended = app.engine.events.ended(run_id)
                    await three_steps.start(app, run_id=run_id)
                    await ended

                async with anyio.create_task_group() as tg:  # warm-up
                    for i in range(10):
                        tg.start_soon(one, f"warm{i}")
                counts.clear()
                async with anyio.create_task_group() as tg:
                    for i in range(runs):
                        tg.start_soon(one, f"run{i}")
                seen = dict(counts)
        finally:
            server.kill()
    print(f"NATS messages per workflow ({runs} runs of {three_steps.name}):")
    for name, n in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{n / runs:6.2f}  {name}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    anyio.run(main, parser.parse_args().runs)
