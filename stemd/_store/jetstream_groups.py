"""Pausing and resuming runs in the JetStream KV store (see
:meth:`~stemd._store.base.Store.pause`): each one compare-and-set on the run's document,
then, on resume, what its wait was given meanwhile (a kept event, its child's end)."""

from __future__ import annotations

import base64
import collections
import copy
from typing import TYPE_CHECKING

from stemd._model import RunStatus
from stemd._store import jetstream_doc as docs
from stemd._store.jetstream_events import take_mail
from stemd._store.transitions import apply_pause, apply_resume, waits_for_events

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._store.base import RunRecord
    from stemd._store.jetstream_bucket import Bucket
    from stemd._store.jetstream_doc import Doc
    from stemd._store.jetstream_events import Events
    from stemd._store.jetstream_records import Records
    from stemd._store.jetstream_waits import Waits

__all__ = [
    "Pauses",
    "pause",
    "pause_workflow",
    "paused_counts",
    "paused_workflows",
    "resume",
]

# A workflow whose new runs are created paused: ``wfp.`` and its name in unpadded base64url
# (as ``wf.`` keys in jetstream_registry), holding b"1"; an empty value: not paused.
_PAUSED = "wfp."


def _key(workflow: str) -> str:
    return _PAUSED + base64.urlsafe_b64encode(workflow.encode()).decode().rstrip("=")


async def paused_counts(records: Records) -> dict[str, int]:
    """How many runs are paused, by workflow. Reads every run: the metrics ask for it now
    and then, not at every scrape."""
    found = (await records.read_all()).values()
    return dict(collections.Counter(doc.rec.workflow for _, doc in found if doc.rec.paused))


class Pauses:
    """Whether new runs of each workflow are created paused, with the revision of its
    ``wfp.`` key, as this process last read or wrote it.

    A start does not read the key: it creates its run as the revision it knows says, and
    the run's first index entry (written before the run, see
    :meth:`Records.write <stemd._store.jetstream_records.Records.write>`) is stored only
    if the key is still at that revision. When it is not (another process paused or
    resumed the workflow), nothing is written and the start reads the key and tries
    again: a pause acknowledged before a start's write is honoured by every process,
    without a read per start.

    Only on a bucket of one replica: the leader of a replicated stream refuses every
    write fenced on a key while another fenced on it is being replicated (measured on
    nats-server 2.15.1: 49 of 50 at once refused), so there a start reads the key.
    """

    # Workflows remembered (more are forgotten all at once: a forgotten one is read again).
    limit = 4096

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, bool]] = {}

    @staticmethod
    def key(workflow: str) -> str:
        """The key saying whether ``workflow``'s new runs are created paused."""
        return _key(workflow)

    def note(self, workflow: str, rev: int, paused: bool) -> None:
        """Remember the key's revision ``rev`` (0: absent) and what it says."""
        if len(self._known) >= self.limit and workflow not in self._known:
            self._known.clear()
        self._known[workflow] = (rev, paused)

    async def state(
        self, bucket: Bucket, workflow: str, *, fresh: bool = False
    ) -> tuple[int, bool]:
        """The key's revision and whether new runs of ``workflow`` are created paused:
        as remembered, or (``fresh``, or not remembered) as the stream's leader says."""
        if not fresh:
            known = self._known.get(workflow)
            if known is not None:
                return known
        msg = await bucket.get(_key(workflow), leader=True)
        rev, paused = (msg.seq, bool(msg.data)) if msg is not None else (0, False)
        self.note(workflow, rev, paused)
        return rev, paused


async def pause_workflow(bucket: Bucket, pauses: Pauses, workflow: str, paused: bool) -> bool:
    """Set whether new runs of ``workflow`` are created paused; whether it changed."""
    if (await pauses.state(bucket, workflow, fresh=True))[1] is paused:
        return False
    subject = bucket.prefix + _key(workflow)
    ack = await bucket.retry("put", bucket.conn.js_publish, subject, b"1" if paused else b"")
    pauses.note(workflow, ack.seq, paused)
    return True


async def paused_workflows(bucket: Bucket) -> list[str]:
    """The workflows whose new runs are created paused, by name."""
    keys = await bucket.keys(_PAUSED + "*")
    out = []
    for msg in await bucket.get_many(keys):
        if msg.data:
            name = bucket.key(msg.subject)[len(_PAUSED) :]
            out.append(base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode())
    return sorted(out)


async def pause(records: Records, run_id: str, now: datetime) -> RunRecord | None:
    """Pause ``run_id`` unless it is unknown, ended or paused already."""

    def fn(doc: Doc) -> Doc | None:
        rec = doc.rec
        if rec.status.is_terminal or rec.paused:
            return None
        return docs.replace(doc, apply_pause(rec, now))

    _, new = await records.mutate(run_id, fn)
    return copy.copy(new.rec) if new is not None else None


async def resume(
    records: Records, events: Events, waits: Waits, run_id: str, now: datetime
) -> RunRecord | None:
    """Resume ``run_id`` if it is paused: in the same write it takes the oldest message of
    its mailbox its wait is for (the events held while it was paused are there), then a
    kept event it has not taken, or its child's end."""

    def fn(doc: Doc) -> Doc | None:
        if not doc.rec.paused:
            return None
        new = docs.replace(doc, apply_resume(doc.rec, now))
        return take_mail(new, now) if waits_for_events(new.rec) else new

    _, new = await records.mutate(run_id, fn)
    if new is None:
        return None
    rec = new.rec
    if waits_for_events(rec):
        taken = await events.take_kept(run_id, rec, now)
        if taken is not None:
            rec = taken
    elif (
        rec.status is RunStatus.SUSPENDED
        and rec.wait_child is not None
        and await waits.await_child(rec.wait_child)
    ):
        woken = await waits.wake_if_waiting(run_id, rec.wait_child, now)
        if woken is not None:
            rec = woken
    return copy.copy(rec)
