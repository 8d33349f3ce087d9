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
    "pause",
    "pause_workflow",
    "paused_counts",
    "paused_workflows",
    "resume",
    "workflow_paused",
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


async def workflow_paused(bucket: Bucket, workflow: str) -> bool:
    """Whether new runs of ``workflow`` are created paused."""
    msg = await bucket.get(_key(workflow), leader=True)
    return msg is not None and bool(msg.data)


async def pause_workflow(bucket: Bucket, workflow: str, paused: bool) -> bool:
    """Set whether new runs of ``workflow`` are created paused; whether it changed."""
    if await workflow_paused(bucket, workflow) is paused:
        return False
    subject = bucket.prefix + _key(workflow)
    await bucket.retry("put", bucket.conn.js_publish, subject, b"1" if paused else b"")
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
