"""The KV store wakes a parent whose child's end did not: waking it is a second write
after the child's end (or after the parent's suspension), and a process that dies, or a
write that fails, in between left the parent waiting forever. Found by the R3 cluster
chaos test (tests/chaos/test_nats_kills.py), where a flag write failed mid-failover."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from stemd._errors import TransportError
from stemd._model import RunStatus
from stemd._store.base import Complete, RunRecord, Suspend
from stemd._store.jetstream import JetStreamStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(nats: NatsServer) -> AsyncIterator[JetStreamStore]:
    """An opened JetStream KV store on its own bucket."""
    opened = JetStreamStore.from_url(f"{nats.url}?bucket=lost")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def record(run_id: str, now: datetime, parent: str | None = None) -> RunRecord:
    """A pending run record created at ``now``, child of ``parent`` if given."""
    return RunRecord(
        run_id=run_id,
        workflow="w",
        status=RunStatus.PENDING,
        params=b"null",
        created_at=now,
        updated_at=now,
        parent_run_id=parent,
    )


async def test_the_sweepers_pass_wakes_a_parent_its_childs_end_missed(
    store: JetStreamStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent suspended on a child whose end never woke it is woken by runnable()."""
    now = datetime.now(UTC)
    await store.create_run(record("parent", now))
    await store.create_run(record("kid", now, parent="parent"))
    claim = await store.claim("parent", "worker", now, 30.0)
    assert claim is not None

    async def lost(child_id: str) -> bool:
        raise TransportError("connection lost")

    # The parent's suspension is written; telling the child it is awaited fails.
    monkeypatch.setattr(store._waits, "await_child", lost)
    with pytest.raises(TransportError):
        await store.commit(
            "parent", claim.token, Suspend(wait_child="kid", wait_key="@join#0"), now
        )
    monkeypatch.undo()
    kid = await store.claim("kid", "worker", now, 30.0)
    assert kid is not None
    ended = await store.commit("kid", kid.token, Complete(result=b"1"), now)
    assert ended.woken == ()
    state = await store.get_run("parent")
    assert state is not None
    assert state.status is RunStatus.SUSPENDED

    store._next_audit = 0.0
    assert ("parent", "workflow") in await store.runnable(now, 100)
    state = await store.get_run("parent")
    assert state is not None
    assert state.status is RunStatus.PENDING
