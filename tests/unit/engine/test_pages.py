"""Listings page instead of truncating: ``runs_waiting_on`` returns every waiting run,
and ``page_runs``/``page_waiting`` (and ``list_runs(after=...)``) go page by page with a
cursor."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import stemd
from stemd._model import RunStatus
from stemd._store.base import RunRecord, Store, Suspend

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 1, tzinfo=UTC)
MANY = 1100  # more than the 1,000 runs_waiting_on used to stop at


async def _suspended(store: Store, run_id: str, topic: str) -> None:
    rec = RunRecord(
        run_id=run_id,
        workflow="pages.wf",
        status=RunStatus.PENDING,
        params=b"null",
        created_at=T0,
        updated_at=T0,
    )
    await store.create_run(rec)
    claim = await store.claim(run_id, "w", T0, 30.0)
    assert claim is not None
    await store.commit(run_id, claim.token, Suspend(wait_topic=topic, wait_key="w@event#0"), T0)


async def test_runs_waiting_on_returns_every_waiting_run(store: Store) -> None:
    """1,100 runs waiting on a topic: runs_waiting_on returns all of them, in creation
    order; page_waiting goes through them 400 at a time."""
    ids = [f"p{i:05d}" for i in range(MANY)]
    for run_id in ids:
        await _suspended(store, run_id, "pages.t")
    async with stemd.App(store=store, workers=False) as app:
        assert [s.run_id for s in await app.runs_waiting_on("pages.t")] == ids
        assert [s.run_id for s in await app.runs_waiting_on("pages.t", 3)] == ids[:3]
        seen: list[str] = []
        page = await app.page_waiting("pages.t", 400)
        pages = 1
        seen += [s.run_id for s in page.runs]
        while page.next is not None:
            page = await app.page_waiting("pages.t", 400, after=page.next)
            seen += [s.run_id for s in page.runs]
            pages += 1
        assert (seen, pages) == (ids, 3)


async def test_runs_page_newest_first_with_a_cursor(store: Store) -> None:
    """page_runs pages newest first; list_runs(after=next) is the same page; the last
    page has no next."""
    ids = [f"q{i}" for i in range(7)]
    for run_id in ids:
        await _suspended(store, run_id, "pages.q")
    async with stemd.App(store=store, workers=False) as app:
        first = await app.page_runs(limit=3)
        assert [s.run_id for s in first.runs] == ["q6", "q5", "q4"]
        assert first.next is not None
        again = await app.list_runs(limit=3, after=first.next)
        assert [s.run_id for s in again] == ["q3", "q2", "q1"]
        second = await app.page_runs(limit=3, after=first.next)
        assert second.next is not None
        last = await app.page_runs(limit=3, after=second.next)
        assert ([s.run_id for s in last.runs], last.next) == (["q0"], None)
        filtered = await app.page_runs(status="suspended", limit=7)
        assert (len(filtered.runs), filtered.next) == (7, None)


@pytest.mark.parametrize("cursor", ["", "abc", "-1", "1.5", "9" * 30])
async def test_a_bad_cursor_is_refused(cursor: str) -> None:
    """A cursor that no page gave is a clear StemError."""
    async with stemd.App(workers=False) as app:
        with pytest.raises(stemd.StemError, match="invalid cursor"):
            await app.page_runs(after=cursor)
        with pytest.raises(stemd.StemError, match="invalid cursor"):
            await app.page_waiting("pages.t", after=cursor)
        with pytest.raises(stemd.StemError, match="limit"):
            await app.page_waiting("pages.t", 0)
