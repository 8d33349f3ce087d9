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
- ``evt.<topic>.<n>`` — the kept events of a topic (their log), numbered 1, 2, 3... per
  topic, each a message with a time to live (``Nats-TTL``: the bucket's stream allows
  per-message TTLs), so the server forgets them when their retention ends. The number
  makes appending a compare-and-set (a new ``n`` must not exist), which tells the
  appender the event before its own exactly. ``evl.<topic>`` — the last event emitted
  to the topic without keeping it (it only takes a position in the stream's order).

An event's position is its stream sequence, and a run's creation is a write to the same
stream: a run takes the events whose sequence is past its creation's (and past the last
one it took of that topic, kept in its document). Its mailbox (messages sent to it) is
part of its document.

An entry is written (and acknowledged) *before* the document that refers to it and
deleted (by subject, so precisely that entry) *after* the document stopped referring to it; the
nonce makes every entry a fresh subject, so two racing writers never overwrite each
other's entries. The document is the truth: readers check every entry against it, so an
entry left behind by a crash is harmless, and it is removed once old (after a no-op
compare-and-set on the document, which fences out any writer still about to refer to it).

On a replicated bucket (R3) any replica may answer a direct get, possibly from a state
that lags behind the last acknowledged write. A read may therefore justify a change (the
compare-and-set proves it current) but not a refusal: "not runnable", "not owned", "no such
run" and the listings that wake parents and deliver events are confirmed by the stream's
leader. With one replica the server is the leader and nothing is read twice.

Values live inside the document; the document must fit in one message (the server's
``max_payload``, 1 MiB by default), otherwise the write fails with :class:`PayloadError`.
The bucket keeps one revision per key (history 1): the store never reads old revisions.

URL: ``nats://HOST:PORT?bucket=stem_runs&replicas=1&storage=file&timeout=2``.
"""

from __future__ import annotations

import copy
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import anyio
import msgspec
import structlog

from stemd.errors import (
    DECODE_ERRORS,
    ConfigError,
    LeaseLost,
    PayloadError,
    StoreError,
    TransportError,
)
from stemd.model import RunStatus
from stemd.natsauth import NatsAuth, redact_url
from stemd.natsconn import (
    EXPECTED_LAST_SUBJECT_SEQ,
    JetStreamApiError,
    NatsConnection,
    StoredMsg,
    WrongLastSequence,
    open_connection,
    split_url,
)
from stemd.options import convert_options, keep
from stemd.store import jetstream_registry as registry
from stemd.store.base import (
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
    cursor_of,
    topics_of,
)
from stemd.store.transitions import (
    apply_cancel,
    apply_claim,
    apply_delivery,
    apply_event,
    apply_fire,
    apply_outcome,
    apply_rewind,
    choose_event,
    is_runnable,
    rewind_cut,
    waits_for_events,
    waits_on,
)

__all__ = ["JetStreamStore"]

log = structlog.get_logger("stemd.store.jetstream")

T = TypeVar("T")

_LIVE = (RunStatus.PENDING, RunStatus.RUNNING)
_MAX_TRIES = 50
_CHUNK = 1000
# Entries not referred to by their run's document are removed only when older than this.
_STALE_AFTER = timedelta(seconds=60)
# Deliveries of one event made at once (each a compare-and-set on one run's document).
_DELIVER_AT_ONCE = 64
_EXPECTED_NEW = {EXPECTED_LAST_SUBJECT_SEQ: "0"}


class _Mail(msgspec.Struct, array_like=True):
    """A message in a run's mailbox, not taken yet."""

    topic: str
    value: bytes


class _Doc(msgspec.Struct, kw_only=True):
    """What ``run.<run_id>`` holds."""

    rec: RunRecord
    cps: dict[str, bytes] = msgspec.field(default_factory=dict)
    # The index entries it owns: kind → key.
    idx: dict[str, str] = msgspec.field(default_factory=dict)
    # Stream sequence of the run's creation: list_runs orders by it.
    order: int = 0
    # Unique per write: tells whether a write whose acknowledgement was lost happened.
    w: str = ""
    # Some run suspended waiting on this one: its end must look for them (most runs
    # have nobody waiting, and skip that look).
    awaited: bool = False
    # When each checkpoint was written (name → time); a name missing here (a document
    # written by a stemd that did not record times) reads back with no time.
    cpt: dict[str, datetime] = msgspec.field(default_factory=dict)
    # The run's mailbox (messages not taken yet, in send order), and every key sent to it.
    mail: list[_Mail] = msgspec.field(default_factory=list)
    keys: list[str] = msgspec.field(default_factory=list)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Doc)


def _ms(at: datetime) -> int:
    return math.floor(at.timestamp() * 1000)


def _wanted(rec: RunRecord) -> dict[str, str]:
    """The index entries (kind → key without nonce) that ``rec`` must have."""
    rid = rec.run_id
    out: dict[str, str] = {}
    if rec.status in _LIVE:
        out["live"] = f"idx.live.{rid}"
    if rec.status is RunStatus.SUSPENDED:
        for i, topic in enumerate(topics_of(rec)):
            out["watch" if i == 0 else f"watch{i}"] = f"idx.watch.{topic}.{rid}"
        if rec.wait_child is not None:
            out["child"] = f"idx.child.{rec.wait_child}.{rid}"
    if rec.timer_at is not None:
        out["timer"] = f"idx.timer.{_ms(rec.timer_at)}.{rid}"
    if rec.parent_run_id is not None:
        out["parent"] = f"idx.parent.{rec.parent_run_id}.{rid}"
    return out


def _base(key: str) -> str:
    return key.rpartition(".")[0]


def _parse_time(stamp: str) -> datetime | None:
    """An RFC 3339 time with up to nanoseconds, as the server writes it."""
    try:
        head, dot, frac = stamp.rstrip("Z").partition(".")
        text = head + (("." + frac[:6]) if dot else "") + "+00:00"
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _replace(
    doc: _Doc,
    rec: RunRecord,
    cps: dict[str, bytes] | None = None,
    cpt: dict[str, datetime] | None = None,
) -> _Doc:
    return _Doc(
        rec=rec,
        cps=doc.cps if cps is None else cps,
        idx=doc.idx,
        order=doc.order,
        w=doc.w,
        awaited=doc.awaited,
        cpt=doc.cpt if cpt is None else cpt,
        mail=doc.mail,
        keys=doc.keys,
    )


def _with_checkpoints(
    doc: _Doc, rec: RunRecord, written: Iterable[tuple[str, bytes]], now: datetime
) -> _Doc:
    """``doc`` with ``rec`` and the checkpoints ``written`` (name, value) recorded at
    ``now`` (a replaced checkpoint keeps its place)."""
    cps = dict(doc.cps)
    cpt = dict(doc.cpt)
    for name, value in written:
        cps[name] = value
        cpt[name] = now
    return _replace(doc, rec, cps, cpt)


def _take(doc: _Doc, topic: str, seq: int | None, value: bytes, now: datetime) -> _Doc:
    """``doc`` after its run, waiting on ``topic``, took an event (position ``seq``) or a
    message (``seq`` ``None``) with ``value``."""
    rec = doc.rec
    new = apply_delivery(rec, now, topic, seq)
    if rec.wait_key is None:
        return _replace(doc, new)
    return _with_checkpoints(doc, new, [(rec.wait_key, value)], now)


def _delivery(
    event: Event,
    now: datetime,
    older: tuple[int, bytes] | None,
    looked_after: int | None,
    need: list[int],
) -> Callable[[_Doc], _Doc | None]:
    """The document change delivering ``event`` to a run waiting on its topic.

    ``older`` is the topic's oldest kept event past position ``looked_after`` (looked up
    for a run whose cursor was there). A run whose cursor is before the event preceding
    ``event`` (``event.prev``) may have an older kept event to take first: unless it was
    looked up for that very cursor, the change appends the cursor to ``need`` and changes
    nothing, and the caller looks it up and tries again."""
    topic = event.topic

    def fn(doc: _Doc) -> _Doc | None:
        rec = doc.rec
        if not waits_on(rec, topic):
            return None
        cursor = cursor_of(rec, topic)
        if cursor >= event.seq:
            return None
        if cursor < event.prev and cursor != looked_after:
            need.append(cursor)
            return None
        chosen = choose_event(rec, event, older if cursor < event.prev else None)
        if chosen is None:
            return None
        return _take(doc, topic, chosen[0], chosen[1], now)

    return fn


def _take_mail(doc: _Doc, now: datetime) -> _Doc:
    """``doc``, whose run just suspended on events, after it took the oldest message of
    its mailbox on one of its topics (unchanged when there is none)."""
    topics = topics_of(doc.rec)
    for i, mail in enumerate(doc.mail):
        if mail.topic in topics:
            new = _take(doc, mail.topic, None, mail.value, now)
            new.mail = doc.mail[:i] + doc.mail[i + 1 :]
            return new
    return doc


def _checkpoints(doc: _Doc) -> list[Checkpoint]:
    """The document's checkpoints in write order, with their times."""
    times = doc.cpt
    return [Checkpoint(n, v, times.get(n)) for n, v in doc.cps.items()]


def _transient(exc: TransportError) -> bool:
    """Whether retrying may help: a lost connection or reply, or JetStream not ready;
    not a definite refusal by the stream."""
    if isinstance(exc, JetStreamApiError):
        return exc.code == 503
    return True


class JetStreamStore:
    """A :class:`~stemd.store.base.Store` in a JetStream KV bucket.

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
        self._pre = f"$KV.{bucket}."
        self._conn: NatsConnection | None = None
        self._cache: OrderedDict[str, tuple[int, _Doc]] = OrderedDict()
        self._cache_size = cache_size
        self._nonce_prefix = secrets.token_hex(3)
        self._nonce = 0
        self._max_doc = 1024 * 1024

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
        if self._conn is None:
            raise StoreError("the JetStream store is not open")
        return self._conn

    async def open(self) -> None:
        """Connect and create (or update) the bucket's stream."""
        if self._conn is not None:
            return
        conn = await open_connection(self.url, name=self.name, timeout=self.timeout, auth=self.auth)
        try:
            await conn.ensure_stream(self.stream_config())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        self._conn = conn
        self._max_doc = conn.max_payload - 1024

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
        conn, self._conn = self._conn, None
        self._cache.clear()
        if conn is not None:
            await conn.close()

    # -- documents ------------------------------------------------------------------------

    async def _retry(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``fn(*args)``, retried with backoff on transient NATS failures for
        ``retry_for`` seconds. Only for idempotent requests."""
        give_up = 0.0
        delay = 0.05
        while True:
            try:
                return await fn(*args)
            except TransportError as exc:
                now = time.monotonic()
                give_up = give_up or now + self.retry_for
                if not _transient(exc) or now + delay > give_up:
                    raise
                log.info("NATS unavailable; retrying", op=what, error=str(exc))
                await anyio.sleep(delay)
                delay = min(1.0, delay * 2)

    def _cache_put(self, run_id: str, rev: int, doc: _Doc) -> None:
        self._cache[run_id] = (rev, doc)
        self._cache.move_to_end(run_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _decode(self, data: bytes, seq: int) -> _Doc:
        try:
            doc = _decoder.decode(data)
        except DECODE_ERRORS as exc:
            raise StoreError(f"undecodable run document at sequence {seq}: {exc}") from None
        if doc.order == 0:
            doc.order = seq  # never rewritten since its creation
        if doc.rec.event_floor == 0:
            doc.rec.event_floor = doc.order  # events are ordered as the stream's writes
        return doc

    async def _read(self, run_id: str, *, leader: bool = False) -> tuple[int, _Doc] | None:
        """The run's revision and document. Any replica of a replicated bucket may answer
        a direct get, from a state that lags behind the last acknowledged write; with
        ``leader`` the stream's leader answers, and every acknowledged write is seen."""
        subject = f"{self._pre}run.{run_id}"
        if leader and self.replicas > 1:
            msg = await self._retry("get", self.conn.leader_get, self.stream, subject)
        else:
            msg = await self._retry("get", self.conn.direct_get, self.stream, subject)
        if msg is None:
            self._cache.pop(run_id, None)
            return None
        doc = self._decode(msg.data, msg.seq)
        self._cache_put(run_id, msg.seq, doc)
        return msg.seq, doc

    async def _lookup(self, run_id: str) -> tuple[int, _Doc] | None:
        """As :meth:`_read`, but a run is never reported missing by a lagging replica."""
        found = await self._read(run_id)
        if found is None and self.replicas > 1:
            found = await self._read(run_id, leader=True)
        return found

    async def _read_many(self, run_ids: Iterable[str]) -> dict[str, tuple[int, _Doc]]:
        subjects = [f"{self._pre}run.{rid}" for rid in dict.fromkeys(run_ids)]
        out: dict[str, tuple[int, _Doc]] = {}
        for i in range(0, len(subjects), _CHUNK):
            msgs = await self._retry(
                "get", self.conn.direct_get_last_many, self.stream, subjects[i : i + _CHUNK]
            )
            for msg in msgs or ():
                rid = msg.subject[len(self._pre) + 4 :]
                out[rid] = (msg.seq, self._decode(msg.data, msg.seq))
        return out

    async def _read_all(self) -> dict[str, tuple[int, _Doc]]:
        """Every run document."""
        subject = f"{self._pre}run.*"
        found = await self._retry("list", self.conn.direct_get_last_many, self.stream, [subject])
        if found is None:  # more than one batched get returns: list the keys, then read
            return await self._read_many(k[4:] for k in await self._keys("run.*"))
        cut = len(self._pre) + 4
        return {m.subject[cut:]: (m.seq, self._decode(m.data, m.seq)) for m in found}

    async def _keys(self, pattern: str) -> list[str]:
        """Keys matching a subject filter (without the bucket prefix)."""
        subject = self._pre + pattern
        # A batched direct get is far cheaper for the server than a stream info with
        # subjects; it answers up to 1024 subjects, beyond which the stream info lists them.
        found = await self._retry("list", self.conn.direct_get_last_many, self.stream, [subject])
        if found is not None:
            subjects: Iterable[str] = [m.subject for m in found]
        else:
            subjects = await self._retry("list", self.conn.stream_subjects, self.stream, subject)
        cut = len(self._pre)
        return [s[cut:] for s in subjects]

    async def _listed(self, pattern: str) -> dict[str, list[str]]:
        """The run ids of the index entries matching ``pattern``, with their keys. On a
        replicated bucket the leader lists them (a batched direct get may be answered by a
        lagging replica), so every entry acknowledged before the call is there."""
        if self.replicas > 1:
            found = await self._retry(
                "list", self.conn.stream_subjects, self.stream, self._pre + pattern
            )
            keys = [s[len(self._pre) :] for s in found]
        else:
            keys = await self._keys(pattern)
        by_run: dict[str, list[str]] = {}
        for key in keys:
            by_run.setdefault(_base(key).rpartition(".")[2], []).append(key)
        return by_run

    def _next_nonce(self) -> str:
        self._nonce += 1
        return f"{self._nonce_prefix}{self._nonce:x}"

    async def _put_entries(self, keys: list[str]) -> None:
        """Store new index entries, all at once, and wait until the stream has
        acknowledged each. They must be stored before the document that refers to them:
        an entry sent without waiting can be lost with the connection or with the stream's
        leader while the document's write, retried, succeeds; the run would then be
        missing from its index (never swept, woken, or found by an emit)."""
        errors: list[Exception] = []

        async def put(key: str) -> None:
            try:
                await self._retry("put", self.conn.js_publish, self._pre + key, b"")
            except Exception as exc:
                errors.append(exc)

        if len(keys) == 1:
            await put(keys[0])
        elif keys:
            async with anyio.create_task_group() as tg:
                for key in keys:
                    tg.start_soon(put, key)
        if errors:
            raise errors[0]

    async def _write(self, run_id: str, rev: int, old: _Doc | None, new: _Doc) -> int:
        """Compare-and-set ``new`` over revision ``rev`` (0: create), keeping its index
        entries in step. Raises WrongLastSequence when someone else wrote first."""
        old_idx = old.idx if old is not None else {}
        idx: dict[str, str] = {}
        added: list[str] = []
        for kind, base in _wanted(new.rec).items():
            entry = old_idx.get(kind)
            if entry is None or _base(entry) != base:
                entry = f"{base}.{self._next_nonce()}"
                added.append(entry)
            idx[kind] = entry
        new.idx = idx
        new.w = self._next_nonce()
        data = _encoder.encode(new)
        if len(data) > self._max_doc:
            raise PayloadError(
                f"run {run_id}: its record and checkpoints take {len(data)} bytes, more "
                f"than a NATS message may hold ({self._max_doc}); keep step values small"
            )
        try:
            await self._put_entries(added)
            seq = await self._cas(run_id, rev, data)
        except WrongLastSequence:
            # Certainly not written: the new entries belong to nobody. (After a lost
            # connection or a cancellation the write may have happened: keep them;
            # if it did not, they are stale entries that readers ignore and remove.)
            for entry in added:
                await self._forget(entry)
            raise
        for kind, entry in old_idx.items():
            if idx.get(kind) != entry:
                await self._forget(entry)
        return seq

    async def _cas(self, run_id: str, rev: int, data: bytes) -> int:
        """Publish ``data`` as ``run.<run_id>`` if its revision is still ``rev``. When the
        answer is lost, read back (from the leader on a replicated bucket, which has every
        acknowledged write): the nonce in ``data`` tells whether the write happened."""
        subject = f"{self._pre}run.{run_id}"
        headers = {EXPECTED_LAST_SUBJECT_SEQ: str(rev)}
        read = self.conn.leader_get if self.replicas > 1 else self.conn.direct_get
        give_up = 0.0
        delay = 0.05
        while True:
            try:
                ack = await self.conn.js_publish(subject, data, headers=headers)
                return ack.seq
            except TransportError as exc:
                if not _transient(exc):
                    raise
                error = exc
            give_up = give_up or time.monotonic() + self.retry_for
            # Unknown outcome: find out, retrying while NATS is away.
            while True:
                if time.monotonic() + delay > give_up:
                    raise error
                await anyio.sleep(delay)
                delay = min(1.0, delay * 2)
                try:
                    msg = await read(self.stream, subject)
                except TransportError as exc:
                    if not _transient(exc):
                        raise
                    error = exc
                    continue
                break
            if msg is not None and msg.data == data:
                return msg.seq  # it was written (the nonce makes the bytes unique)
            current = msg.seq if msg is not None else 0
            if current != rev:
                raise WrongLastSequence(400, 10071, f"wrong last sequence: {current}")
            log.info("NATS unavailable; retrying a write", run_id=run_id, error=str(error))

    async def _forget(self, key: str) -> None:
        """Delete an index entry without waiting (a lost deletion leaves a stale entry,
        which readers ignore and clean up). Keys are never reused: purging the subject
        removes exactly that entry."""
        try:
            await self.conn.purge_subject_nowait(self.stream, self._pre + key)
        except Exception as exc:
            log.debug("index entry not deleted", key=key, error=repr(exc))

    async def _mutate(
        self, run_id: str, fn: Callable[[_Doc], _Doc | None]
    ) -> tuple[_Doc | None, _Doc | None]:
        """Apply ``fn`` to the run's document atomically; return (old, new).

        ``fn`` returns the new document, or ``None`` to change nothing; it may raise
        (LeaseLost...). A change is trusted when the compare-and-set proves the document
        current. A refusal (or a missing run) is trusted only on a document that holds every
        acknowledged write: read again, from the leader on a replicated bucket (a cached
        document may be old, and a lagging replica may answer a direct get).
        """
        cached = self._cache.get(run_id)
        trusted = False
        leader = False
        for _ in range(_MAX_TRIES):
            if cached is None:
                cached = await self._read(run_id, leader=leader)
                trusted = leader or self.replicas == 1
                leader = True
                if cached is None:
                    if not trusted:
                        continue
                    return None, None
            rev, doc = cached
            try:
                new = fn(doc)
            except LeaseLost:
                if not trusted:
                    cached = None
                    continue
                raise
            if new is None:
                if not trusted:
                    cached = None
                    continue
                return doc, None
            try:
                new_rev = await self._write(run_id, rev, doc, new)
            except WrongLastSequence:
                self._cache.pop(run_id, None)
                cached = None
                continue
            self._cache_put(run_id, new_rev, new)
            return doc, new
        raise StoreError(f"run {run_id}: gave up after {_MAX_TRIES} conflicting writes")

    async def _delete(self, run_id: str, rev: int, doc: _Doc) -> bool:
        """Delete the document at revision ``rev`` and its entries; ``False`` if it changed."""
        if not await self._retry("delete", self.conn.delete_msg, self.stream, rev):
            self._cache.pop(run_id, None)
            return False
        self._cache.pop(run_id, None)
        for entry in doc.idx.values():
            await self._forget(entry)
        return True

    # -- stale entries --------------------------------------------------------------------

    async def _clean(self, key: str, run_id: str) -> None:
        """Remove an entry its run's document does not refer to, once it is old enough."""
        msg = await self._retry("get", self.conn.direct_get, self.stream, self._pre + key)
        if msg is None:
            return
        stamp = _parse_time(msg.time)
        if stamp is None or datetime.now(UTC) - stamp < _STALE_AFTER:
            return
        current = await self._read(run_id, leader=True)
        if current is not None:
            rev, doc = current
            if key in doc.idx.values():
                return
            # A no-op compare-and-set: a writer that put this entry and has not yet
            # written its document will now fail and retry with a new entry.
            try:
                await self._write(run_id, rev, doc, copy.copy(doc))
            except WrongLastSequence:
                return
            self._cache.pop(run_id, None)
        log.info("removing a stale index entry", key=key)
        await self._retry("delete", self.conn.delete_msg, self.stream, msg.seq)

    async def _indexed(self, pattern: str, kind: str) -> list[tuple[str, int, _Doc]]:
        """The runs listed under ``pattern`` whose document still owns that entry, as
        (run id, revision, document); stale entries are cleaned up on the way."""
        by_run: dict[str, list[str]] = {}
        for key in await self._keys(pattern):
            by_run.setdefault(_base(key).rpartition(".")[2], []).append(key)
        docs = await self._read_many(by_run)
        out: list[tuple[str, int, _Doc]] = []
        for run_id, keys in by_run.items():
            found = docs.get(run_id)
            # The entries of that kind the document owns (a wait on several topics owns
            # a watch entry for each: kinds watch, watch1, watch2...).
            owned = (
                {e for k, e in found[1].idx.items() if k.rstrip("0123456789") == kind}
                if found is not None
                else set()
            )
            for key in keys:
                if found is not None and key in owned:
                    out.append((run_id, found[0], found[1]))
                else:
                    await self._clean(key, run_id)
        return out

    # -- the protocol ---------------------------------------------------------------------

    async def create_run(self, record: RunRecord) -> tuple[RunRecord, bool]:
        run_id = record.run_id
        for _ in range(_MAX_TRIES):
            # Create-if-absent first (the common case); look only when it exists.
            doc = _Doc(rec=copy.copy(record))
            try:
                rev = await self._write(run_id, 0, None, doc)
            except WrongLastSequence:
                existing = await self._read(run_id, leader=True)
                if existing is not None:
                    return copy.copy(existing[1].rec), False
                continue  # deleted in between: try again
            doc.order = rev
            doc.rec.event_floor = rev
            self._cache_put(run_id, rev, doc)
            return copy.copy(doc.rec), True
        raise StoreError(f"run {run_id}: could not be created")

    async def get_run(self, run_id: str) -> RunRecord | None:
        found = await self._lookup(run_id)
        return copy.copy(found[1].rec) if found is not None else None

    async def get_checkpoints(self, run_id: str) -> list[Checkpoint]:
        found = await self._lookup(run_id)
        if found is None:
            return []
        return _checkpoints(found[1])

    async def claim(self, run_id: str, owner: str, now: datetime, lease: float) -> Claim | None:
        def fn(doc: _Doc) -> _Doc | None:
            if not is_runnable(doc.rec, now):
                return None
            return _replace(doc, apply_claim(doc.rec, owner, now, lease))

        _, new = await self._mutate(run_id, fn)
        if new is None:
            return None
        return Claim(
            token=new.rec.token,
            record=copy.copy(new.rec),
            checkpoints=_checkpoints(new),
        )

    @staticmethod
    def _owned(doc: _Doc, run_id: str, token: int) -> RunRecord:
        rec = doc.rec
        if rec.token != token or rec.status is not RunStatus.RUNNING:
            raise LeaseLost(f"run {run_id} is no longer owned by this worker")
        return rec

    async def renew_lease(self, run_id: str, token: int, now: datetime, lease: float) -> None:
        def fn(doc: _Doc) -> _Doc:
            rec = self._owned(doc, run_id, token)
            expires = now + timedelta(seconds=lease)
            return _replace(
                doc, msgspec.structs.replace(rec, lease_expires_at=expires, updated_at=now)
            )

        old, _ = await self._mutate(run_id, fn)
        if old is None:
            raise LeaseLost(f"run {run_id} is no longer owned by this worker")

    async def save_checkpoint(
        self, run_id: str, token: int, checkpoint: Checkpoint, now: datetime
    ) -> None:
        def fn(doc: _Doc) -> _Doc:
            rec = self._owned(doc, run_id, token)
            touched = msgspec.structs.replace(rec, updated_at=now)
            return _with_checkpoints(doc, touched, [(checkpoint.name, checkpoint.value)], now)

        old, _ = await self._mutate(run_id, fn)
        if old is None:
            raise LeaseLost(f"run {run_id} is no longer owned by this worker")

    async def _child_ended(self, child_id: str) -> bool:
        child = await self._lookup(child_id)
        return child is None or child[1].rec.status.is_terminal

    async def commit(
        self, run_id: str, token: int, outcome: Outcome, now: datetime
    ) -> CommitResult:
        wait_child = outcome.wait_child if isinstance(outcome, Suspend) else None
        child_ended = False
        if wait_child is not None:
            child_ended = await self._child_ended(wait_child)

        def fn(doc: _Doc) -> _Doc:
            rec = self._owned(doc, run_id, token)
            new = apply_outcome(rec, outcome, now, child_ended=child_ended)
            if isinstance(outcome, (Complete, Suspend)) and outcome.checkpoints:
                written = [(cp.name, cp.value) for cp in outcome.checkpoints]
                out = _with_checkpoints(doc, new, written, now)
            else:
                out = _replace(doc, new)
            if waits_for_events(new):
                # A message already in the mailbox is taken in the same write.
                out = _take_mail(out, now)
            return out

        old, new = await self._mutate(run_id, fn)
        if old is None or new is None:
            raise LeaseLost(f"run {run_id} is no longer owned by this worker")
        rec = new.rec
        if waits_for_events(rec):
            # Kept events emitted before this wait (whose deliveries may have found the
            # run busy): the oldest one not taken is taken now. An emit that appended its
            # event after this look finds the wait instead: its index entry was written
            # before the document.
            taken = await self._take_kept(run_id, rec, now)
            if taken is not None:
                rec = taken
        if rec.status.is_terminal:
            return CommitResult(record=copy.copy(rec), woken=await self._wake_parents(new, now))
        # Tell the child it is awaited. If it ended meanwhile, its own end found no
        # waiter (or no flag): wake ourselves.
        if (
            wait_child is not None
            and rec.status is RunStatus.SUSPENDED
            and await self._await_child(wait_child)
        ):
            woken = await self._wake_if_waiting(run_id, wait_child, now)
            if woken is not None:
                rec = woken
        return CommitResult(record=copy.copy(rec))

    async def _await_child(self, child_id: str) -> bool:
        """Flag ``child_id`` as awaited; ``True`` when it has ended (or does not exist).

        The flag is a compare-and-set on the child, so either the child's terminal write
        comes after it (and sees the flag, and wakes the waiters) or before it (and this
        sees the end)."""
        ended = False

        def fn(doc: _Doc) -> _Doc | None:
            nonlocal ended
            ended = doc.rec.status.is_terminal
            if ended or doc.awaited:
                return None
            flagged = _replace(doc, doc.rec)
            flagged.awaited = True
            return flagged

        old, _ = await self._mutate(child_id, fn)
        return old is None or ended

    async def _wake_forgotten_parents(self, now: datetime) -> None:
        """Wake the runs still suspended on a child that has ended (the sweeper's pass).

        A parent is woken by a second write after the child's end (or after its own
        suspension, when the child ended first); a process that dies between the two, or
        a write that fails, would leave it waiting forever. Runs waiting on children are
        few and listed by index, so looking at them all now and then is cheap."""
        waiting: dict[str, set[str]] = {}
        for parent_id, keys in (await self._listed("idx.child.*.*.*")).items():
            for key in keys:
                waiting.setdefault(key.split(".")[2], set()).add(parent_id)
        if not waiting:
            return
        children = await self._read_many(waiting)
        for child_id, parents in waiting.items():
            found = children.get(child_id) or await self._lookup(child_id)
            if found is not None and not found[1].rec.status.is_terminal:
                continue
            for parent_id in sorted(parents):
                if await self._wake_if_waiting(parent_id, child_id, now) is not None:
                    log.warning("woke a run its child's end had not", run_id=parent_id)

    async def _wake_if_waiting(self, run_id: str, child_id: str, now: datetime) -> RunRecord | None:
        def fn(doc: _Doc) -> _Doc | None:
            rec = doc.rec
            if rec.status is not RunStatus.SUSPENDED or rec.wait_child != child_id:
                return None
            return _replace(doc, apply_event(rec, now))

        _, new = await self._mutate(run_id, fn)
        return new.rec if new is not None else None

    async def _wake_parents(self, child: _Doc, now: datetime) -> tuple[str, ...]:
        """Wake the runs suspended waiting on ``child``, which just ended."""
        if not child.awaited:
            return ()
        child_id = child.rec.run_id
        # Every listed run is asked (the wake is conditional): a document read from a
        # lagging replica may not show yet the wait its entry was written for.
        parents = await self._listed(f"idx.child.{child_id}.*.*")
        woken = []
        for parent_id in sorted(parents):
            if await self._wake_if_waiting(parent_id, child_id, now) is not None:
                woken.append(parent_id)
        return tuple(woken)

    # -- events and messages --------------------------------------------------------------

    def _events_subject(self, topic: str) -> str:
        return f"{self._pre}evt.{topic}.*"

    async def _next_kept(self, topic: str, after: int) -> tuple[int, bytes] | None:
        """The topic's oldest kept event past position ``after`` (from the leader on a
        replicated bucket: every event acknowledged before the call is seen)."""
        msg = await self._retry("get", self._get_next, self._events_subject(topic), after + 1)
        return None if msg is None else (msg.seq, msg.data)

    async def _get_next(self, subject: str, seq: int) -> StoredMsg | None:
        return await self.conn.get_next(self.stream, subject, seq, leader=self.replicas > 1)

    async def _last_kept(self, topic: str) -> StoredMsg | None:
        return await self.conn.get_last(
            self.stream, self._events_subject(topic), leader=self.replicas > 1
        )

    async def _take_kept(self, run_id: str, rec: RunRecord, now: datetime) -> RunRecord | None:
        """Give the run that just suspended on events (``rec``) the oldest kept event of
        its topics it has not taken, if there is one; return the run then."""
        best: tuple[int, bytes, str] | None = None
        for topic in topics_of(rec):
            found = await self._next_kept(topic, cursor_of(rec, topic))
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], found[1], topic)
        if best is None:
            return None
        seq, value, topic = best
        token = rec.token

        def fn(doc: _Doc) -> _Doc | None:
            cur = doc.rec
            # Still the same wait (a delivery or a cancel moves the token on) and the event
            # not taken meanwhile.
            if cur.token != token or not waits_on(cur, topic):
                return None
            if cursor_of(cur, topic) >= seq:
                return None
            return _take(doc, topic, seq, value, now)

        _, new = await self._mutate(run_id, fn)
        return copy.copy(new.rec) if new is not None else None

    async def append_event(
        self, topic: str, value: bytes, now: datetime, retain: float | None
    ) -> Event:
        if retain is None:
            # Not kept: a position in the stream's order, and the topic's last kept event
            # read after it (so at or past the one before it: what a delivery needs).
            ack = await self._retry("put", self.conn.js_publish, f"{self._pre}evl.{topic}", value)
            last = await self._retry(
                "get", self.conn.get_last, self.stream, self._events_subject(topic)
            )
            prev = last.seq if last is not None else 0
            return Event(topic=topic, seq=ack.seq, value=value, at=now, prev=prev)
        ttl = {"Nats-TTL": f"{max(1, math.ceil(retain))}s"}
        for _ in range(_MAX_TRIES):
            last = await self._retry("get", self._last_kept, topic)
            number = 1
            prev = 0
            if last is not None:
                prev = last.seq
                tail = last.subject.rpartition(".")[2]
                # A key put there by hand: any free number will do, and its sequence is one.
                number = int(tail) + 1 if tail.isdigit() else last.seq + 1
            try:
                ack = await self.conn.js_publish(
                    f"{self._pre}evt.{topic}.{number}",
                    value,
                    headers={**_EXPECTED_NEW, **ttl},
                )
            except WrongLastSequence:
                continue  # another emit took that number: read the last one again
            expires = now + timedelta(seconds=retain)
            return Event(
                topic=topic, seq=ack.seq, value=value, at=now, prev=prev, expires_at=expires
            )
        raise StoreError(f"topic {topic}: gave up appending after {_MAX_TRIES} conflicts")

    async def deliver_event(
        self, event: Event, now: datetime, *, after: int = 0, limit: int = 1000
    ) -> Delivery:
        # Every listed run is asked (the delivery is conditional): a document read from a
        # lagging replica may not show yet the wait its entry was written for. All of
        # them in one call, ``_DELIVER_AT_ONCE`` at a time: the listing is the cost.
        listed = await self._listed(f"idx.watch.{event.topic}.*.*")
        resumed: list[str] = []
        limiter = anyio.CapacityLimiter(_DELIVER_AT_ONCE)

        async def deliver(run_id: str) -> None:
            async with limiter:
                done = await self._deliver_one(run_id, event, now)
                if done == "resumed":
                    resumed.append(run_id)
                elif done == "not_waiting":
                    for key in listed[run_id]:
                        await self._clean(key, run_id)

        async with anyio.create_task_group() as tg:
            for run_id in listed:
                tg.start_soon(deliver, run_id)
        return Delivery(resumed=resumed)

    async def _deliver_one(
        self, run_id: str, event: Event, now: datetime
    ) -> Literal["resumed", "taken", "not_waiting"]:
        """One conditional delivery of ``event`` to ``run_id``: ``"resumed"``, or nothing
        done because the run has taken the event already or does not wait on its topic."""
        older: tuple[int, bytes] | None = None
        looked_after: int | None = None
        for _ in range(_MAX_TRIES):
            need: list[int] = []
            fn = _delivery(event, now, older, looked_after, need)
            old, new = await self._mutate(run_id, fn)
            if new is not None:
                return "resumed"
            if not need:
                waiting = old is not None and waits_on(old.rec, event.topic)
                return "taken" if waiting else "not_waiting"
            looked_after = need[-1]
            older = await self._next_kept(event.topic, looked_after)
        raise StoreError(f"run {run_id}: gave up delivering after {_MAX_TRIES} tries")

    async def emit_event(
        self, topic: str, value: bytes, now: datetime, retain: float | None, *, limit: int = 1000
    ) -> tuple[Event, Delivery]:
        event = await self.append_event(topic, value, now, retain)
        return event, await self.deliver_event(event, now, limit=limit)

    async def send_message(
        self, run_id: str, topic: str, value: bytes, now: datetime, key: str | None = None
    ) -> SendResult:
        outcome: Literal["ended", "duplicate"] = "ended"
        took = False

        def fn(doc: _Doc) -> _Doc | None:
            nonlocal outcome, took
            rec = doc.rec
            if key is not None and key in doc.keys:
                outcome = "duplicate"
                return None
            if rec.status.is_terminal:
                outcome = "ended"
                return None
            took = waits_on(rec, topic)
            if took:
                new = _take(doc, topic, None, value, now)
            else:
                new = _replace(doc, rec)
                new.mail = [*doc.mail, _Mail(topic, value)]
            if key is not None:
                new.keys = [*doc.keys, key]
            return new

        old, new = await self._mutate(run_id, fn)
        if old is None:
            return SendResult(outcome="not_found")
        if new is None:
            return SendResult(outcome=outcome, record=copy.copy(old.rec))
        return SendResult(outcome="accepted", resumed=took, record=copy.copy(new.rec))

    async def prune_events(self, now: datetime) -> int:
        # Kept events carry their time to live: the server forgets them by itself.
        return 0

    # Timer entries checked against their document lately (key -> (timer_at, when)): the
    # timer asks for the next minute's wake-ups every few seconds, and reading every
    # document again each time (10,000 for 100,000 sleeping runs) held the event loop for
    # 0.4 s. An entry never changes (its key is unique) and a writer that moves a timer
    # deletes the old entry; one left behind only fires a timer for nothing until it is
    # checked again.
    _timers_checked: dict[str, tuple[datetime, float]] | None = None

    async def due_timers(self, until: datetime, limit: int) -> list[tuple[datetime, str]]:
        until_ms = _ms(until)
        candidates: list[tuple[int, str, str]] = []
        for key in await self._keys("idx.timer.*.*.*"):
            _, _, ms, run_id, _ = key.split(".")
            if int(ms) <= until_ms:
                candidates.append((int(ms), run_id, key))
        candidates.sort()
        fresh_since = time.monotonic() - _STALE_AFTER.total_seconds()
        listed = {key for _, _, key in candidates}
        checked = {
            key: seen
            for key, seen in (self._timers_checked or {}).items()
            if key in listed and seen[1] >= fresh_since
        }
        self._timers_checked = checked
        out: dict[str, datetime] = {}
        # Read in slices: stale entries (timers that moved) must not crowd out due ones.
        for i in range(0, len(candidates), max(limit, 64)):
            chunk = candidates[i : i + max(limit, 64)]
            docs = await self._read_many(rid for _, rid, key in chunk if key not in checked)
            for _, run_id, key in chunk:
                known = checked.get(key)
                if known is not None:
                    at: datetime | None = known[0]
                else:
                    found = docs.get(run_id)
                    entry = found[1].idx.get("timer") if found is not None else None
                    if found is None or entry != key:
                        await self._clean(key, run_id)
                        continue
                    at = found[1].rec.timer_at
                    if at is not None:
                        checked[key] = (at, time.monotonic())
                if at is not None and at <= until and run_id not in out:
                    out[run_id] = at
            if len(out) >= limit:
                break
        return sorted((at, rid) for rid, at in out.items())[:limit]

    async def fire_timer(self, run_id: str, now: datetime, timeout_value: bytes) -> FireResult:
        found = self._cache.get(run_id)
        fresh = found is None
        for _ in range(_MAX_TRIES):
            if found is None:
                found = await self._read(run_id, leader=not fresh)
                fresh = True
                if found is None:
                    return FireResult(action="none")
            rev, doc = found
            action, new_rec, _ = apply_fire(doc.rec, now)
            if action == "none":
                if not fresh:  # not due by our cache: make sure
                    found = None
                    continue
                return FireResult(action="none", record=copy.copy(doc.rec))
            if action == "deleted" or new_rec is None:
                if await self._delete(run_id, rev, doc):
                    return FireResult(action="deleted")
                found = None
                continue
            if action == "woken" and new_rec.resume_key is not None:
                written = [(new_rec.resume_key, timeout_value)]
                new = _with_checkpoints(doc, new_rec, written, now)
            else:
                new = _replace(doc, new_rec)
            try:
                new_rev = await self._write(run_id, rev, doc, new)
            except WrongLastSequence:
                self._cache.pop(run_id, None)
                found = None
                continue
            self._cache_put(run_id, new_rev, new)
            woken = await self._wake_parents(new, now) if action == "cancelled" else ()
            return FireResult(action=action, record=copy.copy(new_rec), woken=woken)
        raise StoreError(f"run {run_id}: gave up after {_MAX_TRIES} conflicting writes")

    async def cancel(self, run_id: str, reason: str, now: datetime) -> CommitResult | None:
        def fn(doc: _Doc) -> _Doc | None:
            if doc.rec.status.is_terminal:
                return None
            return _replace(doc, apply_cancel(doc.rec, reason, now))

        _, new = await self._mutate(run_id, fn)
        if new is None:
            return None
        return CommitResult(record=copy.copy(new.rec), woken=await self._wake_parents(new, now))

    async def rewind(self, run_id: str, step: str, now: datetime) -> RunRecord | None:
        def fn(doc: _Doc) -> _Doc:
            cps = dict(doc.cps)
            cpt = dict(doc.cpt)
            for name in rewind_cut(list(cps), step):
                del cps[name]
                cpt.pop(name, None)
            return _replace(doc, apply_rewind(doc.rec, now), cps, cpt)

        _, new = await self._mutate(run_id, fn)
        return copy.copy(new.rec) if new is not None else None

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        return (await self._page_runs(workflow, status, parent_run_id, limit, None)).records

    async def page_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
        after: int | None = None,
    ) -> Page:
        return await self._page_runs(workflow, status, None, limit, after)

    async def _page_runs(
        self,
        workflow: str | None,
        status: RunStatus | None,
        parent_run_id: str | None,
        limit: int,
        after: int | None,
    ) -> Page:
        if parent_run_id is not None:
            found = await self._indexed(f"idx.parent.{parent_run_id}.*.*", "parent")
            docs = [(doc.order, doc) for _, _, doc in found]
        else:
            docs = [(doc.order, doc) for _, doc in (await self._read_all()).values()]
        docs.sort(key=lambda d: d[0], reverse=True)
        out: list[RunRecord] = []
        last = 0
        for order, doc in docs:
            if after is not None and order >= after:
                continue
            rec = doc.rec
            if workflow is not None and rec.workflow != workflow:
                continue
            if status is not None and rec.status is not status:
                continue
            if parent_run_id is not None and rec.parent_run_id != parent_run_id:
                continue
            if len(out) >= limit:
                return Page(records=out, next=last)
            out.append(rec)
            last = order
        return Page(records=out)

    async def runs_waiting_on(self, topic: str, limit: int = 1000) -> list[RunRecord]:
        return (await self.page_waiting(topic, limit=limit)).records

    async def page_waiting(
        self, topic: str, *, limit: int = 1000, after: int | None = None
    ) -> Page:
        waiting = sorted(
            (doc.order, doc.rec)
            for _, _, doc in await self._indexed(f"idx.watch.{topic}.*.*", "watch")
            if waits_on(doc.rec, topic) and (after is None or doc.order > after)
        )
        page = waiting[:limit]
        following = page[-1][0] if len(waiting) > limit else None
        return Page(records=[rec for _, rec in page], next=following)

    # Seconds between two searches for runs still waiting on a child that has ended.
    audit_interval = 10.0
    _next_audit = 0.0

    async def runnable(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        if time.monotonic() >= self._next_audit:
            self._next_audit = time.monotonic() + self.audit_interval
            await self._wake_forgotten_parents(now)
        live = await self._indexed("idx.live.*.*", "live")
        out = []
        for run_id, _, doc in live:
            if is_runnable(doc.rec, now):
                out.append((run_id, doc.rec.queue))
                if len(out) >= limit:
                    break
        return out

    # -- the workflows served (stemd.store.jetstream_registry) ---------------------------

    async def register_workflows(self, workflows: Sequence[WorkflowInfo], now: datetime) -> None:
        await registry.register_workflows(self.conn, self.bucket, workflows, now, retry=self._retry)

    async def registered_workflows(self) -> list[WorkflowInfo]:
        return await registry.registered_workflows(
            self.conn, self.stream, self.bucket, retry=self._retry
        )
