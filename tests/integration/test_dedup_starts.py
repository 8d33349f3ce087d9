"""Deduplication of starts through the wire and across processes: the ``start`` verb's
``dedup_key`` returns the live run started with it (``created: false``); two Apps on one
store (a SQLite file, a NATS cluster) starting one key at once create exactly one run."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

flow = stemd.Flow("dedup.flow", limits=stemd.Limits(dedup_window=600))


@flow.step("wait")
async def wait(ctx: stemd.FlowContext) -> Any:
    """Waits for an event, so that the run stays live."""
    return await ctx.wait_for_event("dedup.go")


@pytest.fixture
async def app(nats: NatsServer) -> AsyncIterator[stemd.App]:
    """A daemon on the test's nats-server serving the wire protocol."""
    async with stemd.App(
        store=nats.url, broker=nats.url, workflows=[flow], options=stemd.AppOptions(nats=nats.url)
    ) as a:
        yield a


async def call(conn: NatsConnection, verb: str, body: Any) -> Any:
    """Send ``body`` to the API verb ``verb``; return the decoded reply."""
    reply = await conn.request(f"stem.api.{verb}", json.dumps(body).encode(), timeout=5)
    return json.loads(reply.data)


async def test_the_start_verb_deduplicates_by_key(app: stemd.App, conn: NatsConnection) -> None:
    """A second start with the same dedup_key returns the first run, not created; another
    key starts another run; an empty key is a bad request that starts nothing."""
    first = await call(conn, "start", {"workflow": "dedup.flow", "dedup_key": "order-1"})
    assert first["created"]
    again = await call(conn, "start", {"workflow": "dedup.flow", "dedup_key": "order-1"})
    assert again == {"run_id": first["run_id"], "created": False}
    other = await call(conn, "start", {"workflow": "dedup.flow", "dedup_key": "order-2"})
    assert other["created"]
    assert other["run_id"] != first["run_id"]
    bad = await call(conn, "start", {"workflow": "dedup.flow", "dedup_key": ""})
    assert bad["error"]["code"] == "bad_request"
    assert len(await app.list_runs(limit=100)) == 2


@pytest.mark.parametrize("kind", ["sqlite", "jetstream"])
async def test_two_apps_starting_one_key_at_once_create_one_run(
    kind: str, nats: NatsServer, tmp_path: Path
) -> None:
    """Two Apps on one store start the same key 10 times each, all at once: exactly one run
    is created and every start returns its id."""
    url = f"sqlite:///{tmp_path / 'dedup.db'}" if kind == "sqlite" else nats.url
    results: list[tuple[str, bool]] = []
    async with (
        stemd.App(store=url, workflows=[flow], workers=False) as one,
        stemd.App(store=url, workflows=[flow], workers=False) as two,
    ):

        async def start(app: stemd.App) -> None:
            results.append(await app.start_run(flow, {}, dedup_key="same"))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(start, one)
                tg.start_soon(start, two)
        assert len(await one.list_runs(limit=100)) == 1
    assert len({run_id for run_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_the_start_verb_takes_a_priority(app: stemd.App, conn: NatsConnection) -> None:
    """A start's priority is recorded with the run; one out of -1000..1000 is a bad
    request that starts nothing."""
    reply = await call(conn, "start", {"workflow": "dedup.flow", "priority": 7})
    rec = await app.engine.store.get_run(reply["run_id"])
    assert rec is not None
    assert rec.priority == 7
    bad = await call(conn, "start", {"workflow": "dedup.flow", "priority": 1001})
    assert bad["error"]["code"] == "bad_request"
    assert len(await app.list_runs(limit=100)) == 1
