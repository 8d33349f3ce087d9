"""The memory store's sessions (:mod:`stemd._store.sessions`) and paused workflows: parts
of :class:`~stemd._store.memory.MemoryStore` (mixins), kept apart from its runs."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from stemd._store.sessions import Released, SessionRecord, apply_takeover, held_by

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._store.base import RunRecord

__all__ = ["MemoryPausedWorkflows", "MemorySessions"]


class MemorySessions:
    """Sessions in a dictionary; ending one gives back the runs it held."""

    _runs: dict[str, RunRecord]
    _live: set[str]
    _sessions: dict[str, SessionRecord]

    def _put(self, rec: RunRecord) -> None:
        raise NotImplementedError  # pragma: no cover - the store's

    async def put_session(self, session: SessionRecord) -> None:
        self._sessions[session.session_id] = session

    async def renew_session(self, session: SessionRecord) -> bool:
        if session.session_id not in self._sessions:
            return False
        self._sessions[session.session_id] = session
        return True

    async def sessions(self) -> list[SessionRecord]:
        return list(self._sessions.values())

    async def end_session(self, session_id: str, now: datetime) -> list[Released]:
        out = []
        for run_id in list(self._live):
            rec = self._runs[run_id]
            if held_by(rec, session_id):
                new = apply_takeover(rec, now)
                self._put(new)
                out.append(Released(run_id=run_id, queue=new.queue, token=new.token))
        self._sessions.pop(session_id, None)
        return out


class MemoryPausedWorkflows:
    """The workflows whose new runs start paused, in a set."""

    _runs: dict[str, RunRecord]
    _paused_workflows: set[str]

    async def pause_workflow(self, workflow: str, paused: bool) -> bool:
        if (workflow in self._paused_workflows) is paused:
            return False
        if paused:
            self._paused_workflows.add(workflow)
        else:
            self._paused_workflows.discard(workflow)
        return True

    async def paused_workflows(self) -> list[str]:
        return sorted(self._paused_workflows)

    async def paused_counts(self) -> dict[str, int]:
        return dict(Counter(r.workflow for r in self._runs.values() if r.paused))
