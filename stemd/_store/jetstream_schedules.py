"""The JetStream KV store's schedules and forked runs.

One key per schedule in the runs' bucket, ``sch.<name>`` (a schedule's name is made of
the characters of a run id, all valid in a key), holding the record as JSON, so that
``nats kv get`` shows it. A write is a compare-and-set on the key's revision (the
stream sequence of its last write).

:class:`JetStreamSchedules` is the part of :class:`~stemd._store.jetstream.JetStreamStore`
that does this.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from stemd._natsconn import WrongLastSequence
from stemd._store.schedules import ScheduleRecord, decode_schedule, encode_schedule

if TYPE_CHECKING:
    from collections.abc import Sequence

    from stemd._natsconn import StoredMsg
    from stemd._store.base import Checkpoint, RunRecord
    from stemd._store.jetstream_bucket import Bucket

__all__ = ["JetStreamSchedules"]

_PREFIX = "sch."


class JetStreamSchedules:
    """The schedules and forks of the JetStream store (a mixin of it)."""

    _bucket: Bucket

    async def _create(
        self, record: RunRecord, checkpoints: Sequence[Checkpoint]
    ) -> tuple[RunRecord, bool]:
        raise NotImplementedError  # pragma: no cover - the store's

    async def fork_run(
        self, record: RunRecord, checkpoints: Sequence[Checkpoint]
    ) -> tuple[RunRecord, bool]:
        return await self._create(record, checkpoints)

    async def get_schedule(self, name: str) -> ScheduleRecord | None:
        msg = await self._bucket.get(_PREFIX + name, leader=True)
        return _decoded(msg)

    async def put_schedule(self, record: ScheduleRecord, revision: int) -> ScheduleRecord | None:
        data = encode_schedule(copy.copy(record))
        try:
            seq = await self._bucket.cas(_PREFIX + record.name, revision, data)
        except WrongLastSequence:
            return None
        return decode_schedule(data, seq)

    async def list_schedules(self) -> list[ScheduleRecord]:
        bucket = self._bucket
        found = await bucket.get_matching(_PREFIX + "*")
        if found is None:  # more than one batched get returns
            found = await bucket.get_many(await bucket.keys(_PREFIX + "*"))
        records = [r for r in map(_decoded, found) if r is not None]
        return sorted(records, key=lambda r: r.name)


def _decoded(msg: StoredMsg | None) -> ScheduleRecord | None:
    if msg is None or not msg.data:
        return None
    return decode_schedule(msg.data, msg.seq)
