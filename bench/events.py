"""Emits and sends to many waiting runs, on each store.

    python bench/events.py                            # 10,000 runs, memory, SQLite, JetStream
    python bench/events.py --runs 2000 --stores sqlite

For each store, ``--runs`` runs are put in a wait straight through the store (created,
claimed, suspended on an event), then resumed four ways through an ``App`` that executes
nothing (``workers=False``: what is timed is the emit or send and its store writes, not
the runs' next steps):

- **fan-out**: one emit on a topic all the runs wait on: seconds, and runs resumed per
  second;
- **emits**: one emit per run, each on the run's own topic, from ``--clients`` concurrent
  tasks: emits/s (each resumes one run);
- **sends**: one ``send`` per run (all waiting on one topic), from ``--clients`` tasks:
  sends/s (each resumes one run);
- **kept**: ``--runs`` emits on topics nobody waits on (each kept for later waits): the
  cost of appending to a topic's log, emits/s.

JetStream: a nats-server (JetStream, file storage) is started on a free loopback port.
SQLite: a fresh file in a temporary directory, ``synchronous=FULL``.

Prints one line per measurement and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

# bench/nats.py would shadow the nats package: drop this directory from the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import stemd  # noqa: E402
from stemd._model import RunStatus  # noqa: E402
from stemd._store import store_from_url  # noqa: E402
from stemd._store.base import RunRecord, Store, Suspend  # noqa: E402
from stemd.testing._nats import nats_server  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

T0 = datetime.now(UTC)


@asynccontextmanager
async def opened(kind: str) -> AsyncIterator[Store]:
    """A fresh, open store of ``kind``."""
    if kind == "jetstream":
        async with nats_server() as server:
            store = store_from_url(f"{server.url}?bucket=bench_events")
            await store.open()
            try:
                yield store
            finally:
                await store.close()
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = "memory://" if kind == "memory" else f"sqlite:///{tmp}/events.db"
        store = store_from_url(url)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


async def together(count: int, clients: int, fn: Callable[[int], Awaitable[None]]) -> None:
    """``fn(0) … fn(count - 1)`` from ``clients`` concurrent tasks."""
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await fn(i)

    async with anyio.create_task_group() as tg:
        for _ in range(clients):
            tg.start_soon(client)


async def waiting(store: Store, prefix: str, runs: int, topic: Callable[[int], str]) -> None:
    """Put ``runs`` runs in a wait on ``topic(i)``, straight through the store."""

    async def one(i: int) -> None:
        run_id = f"{prefix}{i:06d}"
        now = datetime.now(UTC)
        rec = RunRecord(
            run_id=run_id,
            workflow="bench.events",
            status=RunStatus.PENDING,
            params=b"null",
            created_at=now,
            updated_at=now,
        )
        await store.create_run(rec)
        claim = await store.claim(run_id, "bench", now, 300.0)
        assert claim is not None
        suspend = Suspend(wait_topic=topic(i), wait_key="wait@event#0")
        await store.commit(run_id, claim.token, suspend, now)

    await together(runs, 64, one)


async def measure(kind: str, runs: int, clients: int) -> dict[str, Any]:
    out: dict[str, Any] = {"store": kind, "runs": runs}
    # The App must not close the store between measurements.
    async with opened(kind) as store, stemd.App(store=_Kept(store), workers=False) as app:
        await waiting(store, "f", runs, lambda i: "bench.all")
        started = time.perf_counter()
        resumed = await app.emit("bench.all", {"go": True})
        elapsed = time.perf_counter() - started
        assert resumed == runs, resumed
        out["fanout_s"] = round(elapsed, 3)
        out["fanout_resumed_per_s"] = round(runs / elapsed, 1)
        _line(
            kind,
            f"fan-out: one emit resumed {runs:,} runs in {elapsed:.3f} s",
            runs / elapsed,
            "runs/s",
        )

        await waiting(store, "e", runs, lambda i: f"bench.own.{i}")
        started = time.perf_counter()

        async def emit(i: int) -> None:
            assert await app.emit(f"bench.own.{i}", i) == 1

        await together(runs, clients, emit)
        elapsed = time.perf_counter() - started
        out["emits_per_s"] = round(runs / elapsed, 1)
        _line(
            kind,
            f"emits: {runs:,} emits, one waiting run each, {clients} clients",
            runs / elapsed,
            "emits/s",
        )

        await waiting(store, "s", runs, lambda i: "bench.mail")
        started = time.perf_counter()

        async def send(i: int) -> None:
            assert await app.send(f"s{i:06d}", "bench.mail", i) is True

        await together(runs, clients, send)
        elapsed = time.perf_counter() - started
        out["sends_per_s"] = round(runs / elapsed, 1)
        _line(
            kind,
            f"sends: {runs:,} sends, each to a waiting run, {clients} clients",
            runs / elapsed,
            "sends/s",
        )

        started = time.perf_counter()

        async def kept(i: int) -> None:
            assert await app.emit(f"bench.nobody.{i % 100}", i) == 0

        await together(runs, clients, kept)
        elapsed = time.perf_counter() - started
        out["kept_emits_per_s"] = round(runs / elapsed, 1)
        _line(
            kind,
            f"kept: {runs:,} emits nobody waits for (appended to the log)",
            runs / elapsed,
            "emits/s",
        )
    return out


class _Kept:
    """A store that an App opens and closes without closing the real one."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _line(kind: str, what: str, rate: float, unit: str) -> None:
    print(f"{kind:<9} {rate:>9,.0f} {unit:<8} {what}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--stores", default="memory,sqlite,jetstream")
    args = parser.parse_args()
    results = []
    for kind in args.stores.split(","):
        results.append(anyio.run(measure, kind, args.runs, args.clients))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
