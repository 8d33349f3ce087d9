"""The session records of every store (memory, SQLite, JetStream KV): put, renew, list,
and ending a session, which gives its runs back with a new token."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from stemd._errors import LeaseLost
from stemd._model import RunStatus
from stemd._store.base import Checkpoint
from stemd._store.sessions import SessionRecord, SessionStore
from tests.unit.store.test_contract import T0, at, record

if TYPE_CHECKING:
    from stemd._store.base import Store

pytestmark = pytest.mark.anyio


def session(sid: str, beat: int = 0) -> SessionRecord:
    """A session record of ``sid`` at ``beat``."""
    return SessionRecord(
        session_id=sid, host="h", pid=1, started_at=T0, renewed_at=at(beat), beat=beat, lease=4.0
    )


async def test_sessions_are_put_renewed_and_listed(store: Store) -> None:
    """A put session is listed; a renewal replaces its record."""
    assert isinstance(store, SessionStore)
    await store.put_session(session("a:1"))
    await store.put_session(session("b:2"))
    assert await store.renew_session(session("a:1", beat=3))
    found = {s.session_id: s.beat for s in await store.sessions()}
    assert found == {"a:1": 3, "b:2": 0}


async def test_ending_a_session_gives_back_its_runs_and_fences_the_owner(store: Store) -> None:
    """end_session makes the runs the session holds runnable at once with a new token (a
    late write of the old owner is refused), leaves other runs alone, and deletes it."""
    assert isinstance(store, SessionStore)
    await store.put_session(session("dead"))
    for rid in ("r1", "r2", "r3"):
        await store.create_run(record(rid))
    c1 = await store.claim("r1", "dead", T0, 3600.0)
    c2 = await store.claim("r2", "alive", T0, 3600.0)
    assert c1 is not None
    assert c2 is not None
    released = await store.end_session("dead", at(1))
    assert [(r.run_id, r.token) for r in released] == [("r1", c1.token + 1)]
    rec = await store.get_run("r1")
    assert rec is not None
    assert (rec.status, rec.lease_owner) == (RunStatus.PENDING, None)
    assert "r1" in [r for r, _ in await store.runnable(at(1), 10)]
    with pytest.raises(LeaseLost):
        await store.save_checkpoint("r1", c1.token, Checkpoint("s", b"1", at(2)), at(2))
    assert (await store.get_run("r2")).lease_owner == "alive"  # type: ignore[union-attr]
    assert await store.claim("r1", "peer", at(1), 3600.0) is not None
    assert [s.session_id for s in await store.sessions()] == []


async def test_an_ended_session_is_not_renewed(store: Store) -> None:
    """A renewal of a session a peer has ended writes nothing and says so."""
    assert isinstance(store, SessionStore)
    await store.put_session(session("s"))
    await store.end_session("s", at(1))
    assert not await store.renew_session(session("s", beat=1))
    assert await store.sessions() == []
