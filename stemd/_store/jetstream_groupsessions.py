"""The JetStream store's group operations, slots and sessions: a part of
:class:`~stemd._store.jetstream.JetStreamStore` (a mixin) that hands each call to the
module doing it (:mod:`~stemd._store.jetstream_groups`,
:mod:`~stemd._store.jetstream_slots`, :mod:`~stemd._store.jetstream_sessions`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stemd._store import jetstream_groups as groups
from stemd._store import jetstream_slots as slots

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._store.base import RunRecord
    from stemd._store.jetstream_bucket import Bucket
    from stemd._store.jetstream_events import Events
    from stemd._store.jetstream_records import Records
    from stemd._store.jetstream_sessions import Sessions
    from stemd._store.jetstream_waits import Waits
    from stemd._store.sessions import Released, SessionRecord

__all__ = ["JetStreamGroupsAndSessions"]


class JetStreamGroupsAndSessions:
    """Pause and resume, paused workflows, slots and sessions on the store's bucket."""

    _bucket: Bucket
    _pauses: groups.Pauses
    _records: Records
    _events: Events
    _waits: Waits
    _sessions: Sessions

    async def pause(self, run_id: str, now: datetime) -> RunRecord | None:
        return await groups.pause(self._records, run_id, now)

    async def resume(self, run_id: str, now: datetime) -> RunRecord | None:
        return await groups.resume(self._records, self._events, self._waits, run_id, now)

    async def pause_workflow(self, workflow: str, paused: bool) -> bool:
        return await groups.pause_workflow(self._bucket, self._pauses, workflow, paused)

    async def acquire_slot(
        self, scope: str, holder: str, limit: int, now: datetime, expires_at: datetime
    ) -> bool:
        return await slots.acquire_slot(self._bucket, scope, holder, limit, now, expires_at)

    async def release_slot(self, scope: str, holder: str) -> None:
        await slots.release_slot(self._bucket, scope, holder)

    async def slot_holders(self, scope: str, now: datetime) -> list[str]:
        return await slots.slot_holders(self._bucket, scope, now)

    async def paused_counts(self) -> dict[str, int]:
        return await groups.paused_counts(self._records)

    async def paused_workflows(self) -> list[str]:
        return await groups.paused_workflows(self._bucket)

    # -- sessions (stemd._store.jetstream_sessions) ---------------------------------------

    async def put_session(self, session: SessionRecord) -> None:
        await self._sessions.put(session)

    async def renew_session(self, session: SessionRecord) -> bool:
        return await self._sessions.renew(session)

    async def sessions(self) -> list[SessionRecord]:
        return await self._sessions.all()

    async def end_session(self, session_id: str, now: datetime) -> list[Released]:
        return await self._sessions.end(session_id, now)
