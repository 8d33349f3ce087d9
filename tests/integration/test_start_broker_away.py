"""Starting is all or nothing for the caller: with the store up and the JetStream broker
away, a start that created the run answers success (the run is committed and the sweeper
enqueues it once the broker is back) instead of an error that makes callers start it
again; the same through the wire's ``start``."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._natsconn import open_connection
from stemd.testing._nats import nats_server

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

flow = stemd.Flow("away.flow")


@flow.step("only")
async def only(ctx: stemd.FlowContext) -> Any:
    """Returns the params."""
    return ctx.params


def broker(url: str) -> str:
    """The broker on ``url``, giving up on a publish after a second."""
    return f"{url}?timeout=0.5&publish_retry=1"


async def finishes(db: Path, broker_url: str, run_ids: list[str]) -> None:
    """A daemon's App on the same store and broker runs every one of ``run_ids``."""
    async with stemd.App(
        store=f"sqlite:///{db}",
        broker=broker_url,
        workflows=[flow],
        options=stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.2)),
    ) as app:
        for run_id in run_ids:
            result = await app.wait_for_completion(run_id, timeout=30)
            assert result.status is stemd.RunStatus.COMPLETED, result


async def test_a_start_with_the_broker_away_succeeds_and_the_run_executes(tmp_path: Path) -> None:
    """start_workflow with the broker down returns the id of the one run it created."""
    db = tmp_path / "stemd.db"
    async with nats_server() as server:
        url = broker(server.url)
        async with stemd.App(
            store=f"sqlite:///{db}", broker=url, workflows=[flow], workers=False
        ) as client:
            server.kill()
            run_id = await client.start_workflow("away.flow", {"n": 1})
            runs = await client.list_runs(limit=10)
            assert [r.run_id for r in runs] == [run_id]
            assert runs[0].status is stemd.RunStatus.PENDING
        await server.start()
        await finishes(db, url, [run_id])


async def test_the_wire_start_with_the_broker_away_answers_the_run_it_created(
    tmp_path: Path,
) -> None:
    """stem.api.start with the broker down replies with the created run, not an error."""
    db = tmp_path / "stemd.db"
    async with nats_server() as api_server, nats_server() as broker_server:
        url = broker(broker_server.url)
        options = stemd.AppOptions(nats=api_server.url)
        async with stemd.App(
            store=f"sqlite:///{db}", broker=url, workflows=[flow], workers=False, options=options
        ) as daemon:
            conn = await open_connection(api_server.url, name="test-client")
            try:
                broker_server.kill()
                body = json.dumps({"workflow": "away.flow", "params": {"n": 2}}).encode()
                reply = json.loads((await conn.request("stem.api.start", body, timeout=10)).data)
            finally:
                await conn.close()
            assert "error" not in reply, reply
            assert reply["created"] is True
            runs = await daemon.list_runs(limit=10)
            assert [r.run_id for r in runs] == [reply["run_id"]]
        await broker_server.start()
        with anyio.fail_after(40):
            await finishes(db, url, [reply["run_id"]])


async def test_a_start_failing_with_the_store_away_names_the_run_to_retry_with() -> None:
    """The store away: the start fails, naming the run id whose retry cannot fork a run."""
    async with nats_server() as server:
        store = f"{server.url}?timeout=0.5&retry_for=1"
        async with stemd.App(
            store=store, broker=broker(server.url), workflows=[flow], workers=False
        ) as client:
            server.kill()
            with pytest.raises(
                stemd.StemError, match=r"start it again with run_id='([^']+)'"
            ) as caught:
                await client.start_workflow("away.flow", {"n": 3})
            await server.start()
            run_id = re.search(r"run_id='([^']+)'", str(caught.value)).group(1)  # type: ignore[union-attr]
            await client.start_workflow("away.flow", {"n": 3}, run_id=run_id)
            await client.start_workflow("away.flow", {"n": 3}, run_id=run_id)
            assert [r.run_id for r in await client.list_runs(limit=10)] == [run_id]
