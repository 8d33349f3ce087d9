"""A store on JetStream KV: runs shared by every daemon connected to the same NATS.

Layout of the bucket (a KV bucket, so ``nats kv`` tools can inspect it):

- ``run.<run_id>`` — the run's document: its :class:`RunRecord`, its checkpoints in
  order, and the index entries it owns. Every operation is a read-modify-write of this one
  key, made atomic by a compare-and-set on the key's revision (``Nats-Expected-Last-
  Subject-Sequence``): the revision is the fencing primitive, the run's token is checked
  inside the document.
- ``idx.<kind>.<...>.<run_id>.<nonce>`` — index entries, shaped like subjects so that
  listings are subject filters: ``idx.live.<id>`` (PENDING or RUNNING: the sweeper's
  query), ``idx.watch.<topic>.<id>`` (waiting on an event), ``idx.child.<child>.<id>``
  (waiting on a child), ``idx.timer.<epoch_ms>.<id>`` (the run's next timer),
  ``idx.parent.<parent>.<id>`` (children of a run).
- ``evt.<topic>.<n>`` and ``evl.<topic>`` — the topics' event logs (see
  :mod:`~stemd._store.jetstream_events`); a run's mailbox is part of its document.

An entry is written (and acknowledged) *before* the document that refers to it and
deleted (by subject: that entry only) *after* the document stopped referring to it; the nonce
makes every entry a fresh subject, so racing writers never overwrite each other's entries.
The document is the truth: readers check every entry against it, so an entry left behind
by a crash is harmless, and it is removed once old (after a no-op compare-and-set on the
document, which fences out any writer still about to refer to it).

On a replicated bucket (R3) any replica may answer a direct get, possibly from a state
that lags behind the last acknowledged write. A read may therefore justify a change (the
compare-and-set proves it current) but not a refusal: "not runnable", "not owned", "no such
run" and the listings that wake parents and deliver events are confirmed by the stream's
leader. With one replica the server is the leader and nothing is read twice.

Values live inside the document, which must fit in one message (the server's
``max_payload``, 1 MiB by default; else :class:`PayloadError`), one revision per key.

URL: ``nats://HOST:PORT?bucket=stem_runs&replicas=1&storage=file&timeout=2``.

The modules beside this one hold the parts: :mod:`~stemd._store.jetstream_doc` (the
document), :mod:`~stemd._store.jetstream_bucket` (the bucket's requests, retried),
:mod:`~stemd._store.jetstream_records` (documents read, cached, compare-and-set),
:mod:`~stemd._store.jetstream_index` (listings through the index, stale entries),
:mod:`~stemd._store.jetstream_waits` (parents woken),
:mod:`~stemd._store.jetstream_events` (event logs, deliveries, mailboxes),
:mod:`~stemd._store.jetstream_timers`, :mod:`~stemd._store.jetstream_listing` and
:mod:`~stemd._store.jetstream_groupsessions` (pauses, slots, sessions). This one
is the :class:`~stemd._store.base.Store` they make, and the transitions of one run.
"""

from __future__ import annotations

import copy
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

from stemd._errors import ConfigError, LeaseLost, StoreError
from stemd._model import RunStatus
from stemd._natsauth import NatsAuth, redact_url
from stemd._natsconn import NatsConnection, WrongLastSequence, open_connection, split_url
from stemd._options import convert_options, keep
from stemd._store import jetstream_doc as docs
from stemd._store import jetstream_groups as groups
from stemd._store import jetstream_listing as listing
from stemd._store import jetstream_registry as registry
from stemd._store.base import (
    Checkpoint,
    Claim,
    CommitResult,
    Complete,
    Delivery,
    Event,
    FireResult,
    Outcome,
    Page,
    RunRecord,
    SendResult,
    Suspend,
    WorkflowInfo,
)
from stemd._store.jetstream_bucket import Bucket
from stemd._store.jetstream_doc import Doc
from stemd._store.jetstream_events import Events, take_mail
from stemd._store.jetstream_groupsessions import JetStreamGroupsAndSessions
from stemd._store.jetstream_index import Index
from stemd._store.jetstream_records import MAX_TRIES, FenceMoved, Records
from stemd._store.jetstream_schedules import JetStreamSchedules
from stemd._store.jetstream_sessions import Sessions
from stemd._store.jetstream_timers import Timers
from stemd._store.jetstream_waits import Waits
from stemd._store.transitions import (
    apply_cancel,
    apply_claim,
    apply_outcome,
    apply_pause_stop,
    apply_rewind,
    created_paused,
    is_runnable,
    rewind_cut,
    waits_for_events,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from stemd._store.base import TimeoutValue

__all__ = ["JetStreamStore"]

T = TypeVar("T")


class JetStreamStore(JetStreamSchedules, JetStreamGroupsAndSessions):
    """A :class:`~stemd._store.base.Store` in a JetStream KV bucket.

    Args:
        url: the NATS server URL.
        bucket: the KV bucket name (stream ``KV_<bucket>``).
        replicas: stream replicas (1 or 3 in a cluster).
        storage: ``"file"`` or ``"memory"``.
        timeout: seconds to wait for one NATS request (listings wait at least 10 s);
            a request lost with a connection costs this long before it is retried.
        retry_for: seconds an operation keeps retrying while NATS is unreachable (a
            server restart, a leader election) before it fails with TransportError.
        max_bytes: the bucket's size limit (-1: none).
        cache_size: documents remembered between this process's own writes (saves a read
            before each compare-and-set; a stale entry only costs a retry).
        auth: credentials and TLS for the connection (``[nats_auth]``).
    """

    # Seconds between two searches for runs still waiting on a child that has ended.
    audit_interval = 10.0
    _next_audit = 0.0

    def __init__(
        self,
        url: str,
        *,
        bucket: str = "stem_runs",
        replicas: int = 1,
        storage: str = "file",
        timeout: float = 2.0,
        retry_for: float = 15.0,
        max_bytes: int = -1,
        cache_size: int = 4096,
        name: str = "stemd-store",
        auth: NatsAuth | None = None,
    ) -> None:
        if not bucket or not all(c.isalnum() or c in "-_" for c in bucket):
            raise ConfigError(f"store: invalid bucket name {bucket!r}")
        if storage not in ("file", "memory"):
            raise ConfigError(f"store: storage must be 'file' or 'memory', not {storage!r}")
        if replicas < 1 or replicas > 5:
            raise ConfigError(f"store: replicas must be 1-5, not {replicas}")
        self.url = url
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.replicas = replicas
        self.storage = storage
        self.timeout = timeout
        self.retry_for = retry_for
        self.max_bytes = max_bytes
        self.name = name
        self.auth = auth
        self._bucket = Bucket(bucket, replicas=replicas, retry_for=retry_for)
        self._records = Records(self._bucket, cache_size=cache_size)
        self._index = Index(self._records)
        self._waits = Waits(self._records, self._index)
        self._timers = Timers(self._records, self._index, self._waits)
        self._events = Events(self._records, self._index)
        self._sessions = Sessions(self._index)
        self._pauses = groups.Pauses()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> JetStreamStore:
        """A store for ``nats://HOST:PORT?bucket=...&replicas=...&storage=...&timeout=...``
        (keyword options override the query)."""
        server, query = split_url(url)
        kinds: dict[str, Callable[[Any], Any]] = {
            **dict.fromkeys(("replicas", "max_bytes", "cache_size"), int),
            **dict.fromkeys(("timeout", "retry_for"), float),
            **dict.fromkeys(("bucket", "storage", "name"), str),
            "auth": keep,
        }
        where = f" in {redact_url(url)!r}"
        kwargs = convert_options({**query, **options}, kinds, what="store", where=where)
        return cls(server, **kwargs)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def conn(self) -> NatsConnection:
        """The connection (:class:`StoreError` while the store is not open)."""
        return self._bucket.conn

    async def open(self) -> None:
        """Connect and create (or update) the bucket's stream."""
        if self._bucket.is_open:
            return
        conn = await open_connection(self.url, name=self.name, timeout=self.timeout, auth=self.auth)
        try:
            await conn.ensure_stream(self.stream_config())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        self._bucket.attach(conn)
        self._records.max_doc = conn.max_payload - 1024

    def stream_config(self) -> dict[str, Any]:
        """The configuration of the bucket's stream."""
        return {
            "name": self.stream,
            "subjects": [f"$KV.{self.bucket}.>"],
            "retention": "limits",
            "max_msgs_per_subject": 1,
            "max_bytes": self.max_bytes,
            "discard": "new",
            "storage": self.storage,
            "num_replicas": self.replicas,
            "allow_direct": True,
            # Kept events expire by themselves (``evt.<topic>.<n>``).
            "allow_msg_ttl": True,
            "allow_rollup_hdrs": True,
            "deny_delete": False,
            "deny_purge": False,
            "duplicate_window": 120_000_000_000,
        }

    async def close(self) -> None:
        conn = self._bucket.attach(None)
        self._records.clear()
        if conn is not None:
            await conn.close()

    async def _retry(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``fn(*args)``, retried on transient NATS failures for ``retry_for`` seconds
        (see :meth:`Bucket.retry <stemd._store.jetstream_bucket.Bucket.retry>`)."""
        return await self._bucket.retry(what, fn, *args)

    # -- one run --------------------------------------------------------------------------

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        return await self._create(record, ())

    async def _create(
        self, record: RunRecord, checkpoints: Sequence[Checkpoint]
    ) -> tuple[RunRecord, bool]:
        records = self._records
        run_id = record.run_id
        pauses = self._pauses
        workflow = record.workflow
        # Whether the workflow is paused, as known here: the write is fenced on the
        # revision of its key (see groups.Pauses). A run without index entries to fence
        # reads the key first, and so does every start on a replicated bucket: there the
        # stream's leader refuses all but one of the writes fenced on one key at once.
        fenced = self.replicas == 1 and bool(docs.wanted(record))
        pause_rev, paused = await pauses.state(self._bucket, workflow, fresh=not fenced)
        for _ in range(MAX_TRIES):
            # Create-if-absent first (the common case); look only when it exists.
            rec = created_paused(record) if paused else record
            doc = Doc(rec=copy.copy(rec))
            for cp in checkpoints:
                doc.cps[cp.name] = cp.value
                doc.cpt[cp.name] = record.created_at
            try:
                fence = (pauses.key(workflow), pause_rev) if fenced else None
                rev = await records.write(run_id, 0, None, doc, fence)
            except FenceMoved:
                pause_rev, paused = await pauses.state(self._bucket, workflow, fresh=True)
                continue
            except WrongLastSequence:
                existing = await records.read(run_id, leader=True)
                if existing is not None:
                    return copy.copy(existing[1].rec), False
                continue  # deleted in between: try again
            doc.order = rev
            doc.rec.event_floor = rev
            records.remember(run_id, rev, doc)
            return copy.copy(doc.rec), True
        raise StoreError(f"run {run_id}: could not be created")

    async def get_run(self, run_id: str) -> RunRecord | None:
        found = await self._records.lookup(run_id)
        return copy.copy(found[1].rec) if found is not None else None

    async def get_checkpoints(self, run_id: str) -> list[Checkpoint]:
        found = await self._records.lookup(run_id)
        if found is None:
            return []
        return docs.checkpoints(found[1])

    async def claim(self, run_id: str, owner: str, now: datetime, lease: float) -> Claim | None:
        def fn(doc: Doc) -> Doc | None:
            if not is_runnable(doc.rec, now):
                return None
            return docs.replace(doc, apply_claim(doc.rec, owner, now, lease))

        _, new = await self._records.mutate(run_id, fn)
        if new is None:
            return None
        return Claim(
            token=new.rec.token,
            record=copy.copy(new.rec),
            checkpoints=docs.checkpoints(new),
        )

    @staticmethod
    def _owned(doc: Doc, run_id: str, token: int) -> RunRecord:
        rec = doc.rec
        if rec.token != token or rec.status is not RunStatus.RUNNING:
            raise LeaseLost(f"run {run_id} is no longer owned by this worker")
        return rec

    async def _change_owned(self, run_id: str, fn: Callable[[Doc], Doc]) -> Doc:
        """Apply ``fn`` to a run this worker owns; the new document."""
        old, new = await self._records.mutate(run_id, fn)
        if old is None or new is None:
            raise LeaseLost(f"run {run_id} is no longer owned by this worker")
        return new

    async def renew_lease(self, run_id: str, token: int, now: datetime, lease: float) -> None:
        def fn(doc: Doc) -> Doc:
            rec = self._owned(doc, run_id, token)
            expires = now + timedelta(seconds=lease)
            return docs.replace(
                doc, msgspec.structs.replace(rec, lease_expires_at=expires, updated_at=now)
            )

        await self._change_owned(run_id, fn)

    async def save_checkpoint(
        self, run_id: str, token: int, checkpoint: Checkpoint, now: datetime
    ) -> None:
        def fn(doc: Doc) -> Doc:
            rec = self._owned(doc, run_id, token)
            touched = msgspec.structs.replace(rec, updated_at=now)
            if rec.paused:  # it stops at this checkpoint
                touched = apply_pause_stop(rec, now)
            return docs.with_checkpoints(doc, touched, [(checkpoint.name, checkpoint.value)], now)

        if (await self._change_owned(run_id, fn)).rec.paused:
            raise LeaseLost(f"run {run_id} is paused: it stops at this checkpoint")

    async def commit(
        self, run_id: str, token: int, outcome: Outcome, now: datetime
    ) -> CommitResult:
        waits = self._waits
        wait_child = outcome.wait_child if isinstance(outcome, Suspend) else None
        child_ended = False
        if wait_child is not None:
            child_ended = await waits.child_ended(wait_child)

        def fn(doc: Doc) -> Doc:
            rec = self._owned(doc, run_id, token)
            new = apply_outcome(rec, outcome, now, child_ended=child_ended)
            if isinstance(outcome, (Complete, Suspend)) and outcome.checkpoints:
                written = [(cp.name, cp.value) for cp in outcome.checkpoints]
                out = docs.with_checkpoints(doc, new, written, now)
            else:
                out = docs.replace(doc, new)
            if waits_for_events(new) and not new.paused:
                # A message already in the mailbox is taken in the same write.
                out = take_mail(out, now)
            return out

        new = await self._change_owned(run_id, fn)
        rec = new.rec
        if waits_for_events(rec) and not rec.paused:
            # Kept events emitted before this wait (whose deliveries may have found the
            # run busy): the oldest one not taken is taken now. An emit that appended its
            # event after this look finds the wait instead: its index entry was written
            # before the document.
            taken = await self._events.take_kept(run_id, rec, now)
            if taken is not None:
                rec = taken
        if rec.status.is_terminal:
            return CommitResult(record=copy.copy(rec), woken=await waits.wake_parents(new, now))
        # Tell the child it is awaited. If it ended meanwhile, its own end found no
        # waiter (or no flag): wake ourselves.
        if (
            wait_child is not None
            and rec.status is RunStatus.SUSPENDED
            and await waits.await_child(wait_child)
        ):
            woken = await waits.wake_if_waiting(run_id, wait_child, now)
            if woken is not None:
                rec = woken
        return CommitResult(record=copy.copy(rec))

    async def cancel(self, run_id: str, reason: str, now: datetime) -> CommitResult | None:
        def fn(doc: Doc) -> Doc | None:
            if doc.rec.status.is_terminal:
                return None
            return docs.replace(doc, apply_cancel(doc.rec, reason, now))

        _, new = await self._records.mutate(run_id, fn)
        if new is None:
            return None
        woken = await self._waits.wake_parents(new, now)
        return CommitResult(record=copy.copy(new.rec), woken=woken)

    async def rewind(self, run_id: str, step: str, now: datetime) -> RunRecord | None:
        def fn(doc: Doc) -> Doc:
            cps = dict(doc.cps)
            cpt = dict(doc.cpt)
            for name in rewind_cut(list(cps), step):
                del cps[name]
                cpt.pop(name, None)
            return docs.replace(doc, apply_rewind(doc.rec, now), cps, cpt)

        _, new = await self._records.mutate(run_id, fn)
        return copy.copy(new.rec) if new is not None else None

    # -- timers, events, listings ---------------------------------------------------------

    async def due_timers(self, until: datetime, limit: int) -> list[tuple[datetime, str]]:
        return await self._timers.due(until, limit)

    async def fire_timer(self, run_id: str, now: datetime, timeout: TimeoutValue) -> FireResult:
        return await self._timers.fire(run_id, now, timeout)

    async def append_event(
        self, topic: str, value: bytes, now: datetime, retain: float | None
    ) -> Event:
        return await self._events.append(topic, value, now, retain)

    async def deliver_event(
        self, event: Event, now: datetime, *, after: int = 0, limit: int = 1000
    ) -> Delivery:
        return await self._events.deliver(event, now)

    async def emit_event(
        self, topic: str, value: bytes, now: datetime, retain: float | None, *, limit: int = 1000
    ) -> tuple[Event, Delivery]:
        event = await self._events.append(topic, value, now, retain)
        return event, await self._events.deliver(event, now)

    async def send_message(
        self, run_id: str, topic: str, value: bytes, now: datetime, key: str | None = None
    ) -> SendResult:
        return await self._events.send(run_id, topic, value, now, key)

    async def prune_events(self, now: datetime) -> int:
        # Kept events carry their time to live: the server forgets them by itself.
        return 0

    async def runs_waiting_on(self, topic: str, limit: int = 1000) -> list[RunRecord]:
        return (await self._events.waiting(topic, limit, None)).records

    async def page_waiting(
        self, topic: str, *, limit: int = 1000, after: int | None = None
    ) -> Page:
        return await self._events.waiting(topic, limit, after)

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        page = await listing.page_runs(
            self._index, workflow=workflow, status=status, parent_run_id=parent_run_id, limit=limit
        )
        return page.records

    async def page_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> Page:
        return await listing.page_runs(
            self._index,
            workflow=workflow,
            status=status,
            parent_run_id=None,
            limit=limit,
            after=after,
        )

    async def runnable(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        if time.monotonic() >= self._next_audit:
            self._next_audit = time.monotonic() + self.audit_interval
            await self._waits.wake_forgotten_parents(now)
        return await listing.runnable(self._index, now, limit)

    # -- the workflows served (stemd._store.jetstream_registry) ---------------------------

    async def register_workflows(self, workflows: Sequence[WorkflowInfo], now: datetime) -> None:
        await registry.register_workflows(self.conn, self.bucket, workflows, now, retry=self._retry)

    async def registered_workflows(self) -> list[WorkflowInfo]:
        return await registry.registered_workflows(
            self.conn, self.stream, self.bucket, retry=self._retry
        )
