"""What a store keeps of schedules, and of runs forked from others.

A schedule's record holds its definition (as the daemons that serve it last registered
it) and its state: the last tick dealt with, the last run it started, and whether it is
paused. Every write is a compare-and-set on the record's ``revision``, so daemons sharing
a store never undo one another's progress (see :mod:`stemd._engine.scheduling`).

The three stores implement :class:`ScheduleStore` and :class:`ForkStore`: the memory
store with :class:`MemorySchedules`, SQLite in :mod:`stemd._store.sqlite_schedules`,
JetStream in :mod:`stemd._store.jetstream_schedules`.
"""

from __future__ import annotations

import copy
import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import msgspec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stemd._store.base import Checkpoint, RunRecord

__all__ = [
    "CatchUp",
    "ForkStore",
    "MemorySchedules",
    "Overlap",
    "ScheduleRecord",
    "ScheduleStore",
    "decode_schedule",
    "encode_schedule",
]

Overlap = Literal["skip", "allow", "cancel"]
CatchUp = Literal["skip", "latest", "all"]


class ScheduleRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as stored: its definition and its state.

    ``params`` are the run params encoded by the engine's codec. ``last_tick``: every tick
    at or before it has been dealt with (started, skipped or missed). ``revision`` is
    set by the store on what it returns and ignored on what it is given. ``nonce`` makes
    each write's bytes unique (a store that reads back a write of unknown outcome tells
    by it whether it happened).
    """

    name: str
    workflow: str
    cron: str
    timezone: str = "UTC"
    params: bytes = b""
    overlap: Overlap = "skip"
    catch_up: CatchUp = "skip"
    catch_up_limit: int = 100
    grace: float = 60.0
    paused: bool = False
    last_tick: datetime | None = None
    last_run_id: str | None = None
    updated_at: datetime | None = None
    revision: int = 0
    nonce: str = ""


_decoder = msgspec.json.Decoder(ScheduleRecord)


def encode_schedule(record: ScheduleRecord) -> bytes:
    """The record as JSON, with a fresh nonce and without its revision."""
    return msgspec.json.encode(
        msgspec.structs.replace(record, revision=0, nonce=secrets.token_hex(8))
    )


def decode_schedule(data: bytes, revision: int) -> ScheduleRecord:
    """The record stored as ``data`` at ``revision``."""
    return msgspec.structs.replace(_decoder.decode(data), revision=revision)


@runtime_checkable
class ScheduleStore(Protocol):
    """A store that keeps schedules."""

    async def get_schedule(self, name: str) -> ScheduleRecord | None:
        """The schedule ``name``, or ``None``."""
        ...

    async def put_schedule(self, record: ScheduleRecord, revision: int) -> ScheduleRecord | None:
        """Store ``record`` if the stored one is still at ``revision`` (0: none is stored);
        return it with its new revision, or ``None`` when another write came first."""
        ...

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by name."""
        ...


@runtime_checkable
class ForkStore(Protocol):
    """A store that creates a run with checkpoints already recorded."""

    async def fork_run(
        self, record: RunRecord, checkpoints: Sequence[Checkpoint]
    ) -> tuple[RunRecord, bool]:
        """As :meth:`~stemd._store.base.Store.create_run`, with ``checkpoints`` recorded
        in the same atomic write (in their order; times set to the record's creation)."""
        ...


class MemorySchedules:
    """:class:`ScheduleStore` in a dictionary (a mixin of the memory store)."""

    _schedule_records: dict[str, ScheduleRecord]

    def _schedules(self) -> dict[str, ScheduleRecord]:
        try:
            return self._schedule_records
        except AttributeError:
            self._schedule_records = {}
            return self._schedule_records

    async def get_schedule(self, name: str) -> ScheduleRecord | None:
        return self._schedules().get(name)

    async def put_schedule(self, record: ScheduleRecord, revision: int) -> ScheduleRecord | None:
        schedules = self._schedules()
        current = schedules.get(record.name)
        if (current.revision if current is not None else 0) != revision:
            return None
        stored = msgspec.structs.replace(copy.copy(record), revision=revision + 1)
        schedules[record.name] = stored
        return stored

    async def list_schedules(self) -> list[ScheduleRecord]:
        schedules = self._schedules()
        return [schedules[name] for name in sorted(schedules)]
