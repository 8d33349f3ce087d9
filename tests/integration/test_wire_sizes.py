"""What the wire accepts it can answer: a run built from a start with 600 KB of params and
an emit of 500 KB is read back with ``get`` (its checkpoints paged) and listed with
``list`` (fewer runs, or a run without its checkpoints), never refused as too large."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

import stemd
from stemd._cli.client import NatsClient
from stemd._natsconn import open_connection
from tests.helpers import wait_status

if TYPE_CHECKING:
    from pathlib import Path

    from stemd._natsconn import NatsConnection
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

big = stemd.Flow("sizes.big")


@big.step("first")
async def first(ctx: stemd.FlowContext) -> int:
    """Small."""
    return len(ctx.params["blob"])


@big.step("wait")
async def wait(ctx: stemd.FlowContext) -> Any:
    """Returns the (large) event."""
    return await ctx.wait_for_event("sizes.go")


@big.step("last")
async def last(ctx: stemd.FlowContext) -> int:
    """Small."""
    return len(ctx.previous_result["blob"])


async def call(conn: NatsConnection, verb: str, body: Any) -> Any:
    """The decoded reply of ``verb`` to ``body``."""
    reply = await conn.request(f"stem.api.{verb}", json.dumps(body).encode(), timeout=10)
    return json.loads(reply.data)


async def test_a_run_built_from_accepted_requests_reads_back(
    nats: NatsServer, tmp_path: Path
) -> None:
    """600 KB params and a 500 KB emit: get pages the checkpoints, list answers."""
    options = stemd.AppOptions(nats=nats.url)
    async with stemd.App(
        store=f"sqlite:///{tmp_path / 'stemd.db'}", workflows=[big], options=options
    ) as app:
        conn = await open_connection(nats.url, name="test-client")
        try:
            start = {"workflow": "sizes.big", "params": {"blob": "p" * 600_000}, "run_id": "b1"}
            assert (await call(conn, "start", start))["created"]
            await wait_status(app, "b1", stemd.RunStatus.SUSPENDED)
            emitted = await call(
                conn, "emit", {"topic": "sizes.go", "payload": {"blob": "e" * 500_000}}
            )
            assert emitted == {"resumed": 1}
            await wait_status(app, "b1", stemd.RunStatus.COMPLETED)
            stored = await app.get_run("b1")
            assert stored is not None

            first_page = await call(conn, "get", {"run_id": "b1"})
            assert "error" not in first_page, first_page
            run = first_page["run"]
            assert run["params"] == {"blob": "p" * 600_000}
            checkpoints = dict(run["checkpoints"])
            cursor = first_page.get("next")
            assert cursor is not None
            while cursor is not None:
                page = await call(conn, "get", {"run_id": "b1", "checkpoints_after": cursor})
                assert "error" not in page, page
                assert page["run"]["run_id"] == "b1"
                checkpoints.update(page["run"]["checkpoints"])
                cursor = page.get("next")
            assert checkpoints == stored.checkpoints

            listed = await call(conn, "list", {"limit": 1})
            assert "error" not in listed, listed
            assert [r["run_id"] for r in listed["runs"]] == ["b1"]
            assert listed["partial"] is True

            # The CLI's client follows the pages.
            client = NatsClient(conn, nats.url)
            assert await client.get("b1") == stored
        finally:
            await conn.close()
