"""Events and messages in the JetStream KV store: a topic's log of kept events, their
delivery to the runs waiting on the topic, and each run's mailbox.

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
"""

from __future__ import annotations

import copy
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Literal, TypeAlias

import anyio

from stemd._errors import StoreError
from stemd._natsconn import EXPECTED_LAST_SUBJECT_SEQ, WrongLastSequence
from stemd._store import jetstream_doc as docs
from stemd._store.base import Delivery, Event, Page, SendResult, cursor_of, topics_of
from stemd._store.jetstream_doc import Mail
from stemd._store.jetstream_records import MAX_TRIES, after_conflict
from stemd._store.transitions import apply_delivery, apply_hold, choose_event, waits_on

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from stemd._natsconn import StoredMsg
    from stemd._store.base import RunRecord
    from stemd._store.jetstream_doc import Doc
    from stemd._store.jetstream_index import Index
    from stemd._store.jetstream_records import Records

__all__ = ["Events", "take", "take_mail"]

# Deliveries of one event made at once (each a compare-and-set on one run's document).
_DELIVER_AT_ONCE = 64
_EXPECTED_NEW = {EXPECTED_LAST_SUBJECT_SEQ: "0"}


def take(doc: Doc, topic: str, seq: int | None, value: bytes, now: datetime) -> Doc:
    """``doc`` after its run, waiting on ``topic``, took an event (position ``seq``) or a
    message (``seq`` ``None``) with ``value``."""
    rec = doc.rec
    new = apply_delivery(rec, now, topic, seq)
    if rec.wait_key is None:
        return docs.replace(doc, new)
    return docs.with_checkpoints(doc, new, [(rec.wait_key, value)], now)


def take_mail(doc: Doc, now: datetime) -> Doc:
    """``doc``, whose run just suspended on events, after it took the oldest message of
    its mailbox on one of its topics (unchanged when there is none)."""
    topics = topics_of(doc.rec)
    for i, mail in enumerate(doc.mail):
        if mail.topic in topics:
            new = take(doc, mail.topic, None, mail.value, now)
            new.mail = doc.mail[:i] + doc.mail[i + 1 :]
            return new
    return doc


# The oldest kept event of a topic past a position, per (topic, position) looked up.
Looked: TypeAlias = dict[tuple[str, int], tuple[int, bytes] | None]


def _delivery(
    event: Event, now: datetime, looked: Looked, need: list[tuple[str, int]]
) -> Callable[[Doc], Doc | None]:
    """The document change delivering ``event`` to a run waiting on its topic.

    ``looked`` holds the oldest kept event of a topic past a position, for the (topic,
    position) pairs looked up so far. The run takes the oldest event there is for it: an
    older kept event of ``event``'s topic (emitted concurrently, its own delivery not there
    yet: a cursor before ``event.prev``) or of another topic it waits on (kept while it was
    busy, its suspension's own look not done yet). A pair the change needs and ``looked``
    lacks is appended to ``need``, the change changes nothing, and the caller looks them
    up and tries again."""
    topic = event.topic

    def fn(doc: Doc) -> Doc | None:
        rec = doc.rec
        if not waits_on(rec, topic):
            return None
        cursor = cursor_of(rec, topic)
        if cursor >= event.seq:
            return None
        wanted = [(other, cursor_of(rec, other)) for other in topics_of(rec) if other != topic]
        if cursor < event.prev:
            wanted.append((topic, cursor))
        missing = [pair for pair in wanted if pair not in looked]
        if missing:
            need.extend(missing)
            return None
        older = looked[topic, cursor] if cursor < event.prev else None
        chosen = choose_event(rec, event, older)
        if chosen is None:
            return None
        took = topic
        for other, after in wanted:
            found = looked[other, after]
            if other != topic and found is not None and found[0] < chosen[0]:
                chosen, took = found, other
        if rec.paused:  # held: kept in its mailbox until it is resumed
            held = docs.replace(doc, apply_hold(rec, now, took, chosen[0]))
            held.mail = [*doc.mail, Mail(took, chosen[1])]
            return held
        return take(doc, took, chosen[0], chosen[1], now)

    return fn


class Events:
    """The topics' event logs, their deliveries, and the runs' mailboxes."""

    def __init__(self, records: Records, index: Index) -> None:
        self.records = records
        self.index = index
        self.bucket = records.bucket

    # -- the log --------------------------------------------------------------------------

    def _subject(self, topic: str) -> str:
        return f"{self.bucket.prefix}evt.{topic}.*"

    @property
    def _leader(self) -> bool:
        return self.bucket.replicas > 1

    async def _get_next(self, subject: str, seq: int) -> StoredMsg | None:
        return await self.bucket.conn.get_next(
            self.bucket.stream, subject, seq, leader=self._leader
        )

    async def _get_last(self, topic: str) -> StoredMsg | None:
        return await self.bucket.conn.get_last(
            self.bucket.stream, self._subject(topic), leader=self._leader
        )

    async def next_kept(self, topic: str, after: int) -> tuple[int, bytes] | None:
        """The topic's oldest kept event past position ``after`` (from the leader on a
        replicated bucket: every event acknowledged before the call is seen)."""
        msg = await self.bucket.retry("get", self._get_next, self._subject(topic), after + 1)
        return None if msg is None else (msg.seq, msg.data)

    async def take_kept(self, run_id: str, rec: RunRecord, now: datetime) -> RunRecord | None:
        """Give the run that just suspended on events (``rec``) the oldest kept event of
        its topics it has not taken, if there is one; return the run then."""
        best: tuple[int, bytes, str] | None = None
        for topic in topics_of(rec):
            found = await self.next_kept(topic, cursor_of(rec, topic))
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], found[1], topic)
        if best is None:
            return None
        seq, value, topic = best
        token = rec.token

        def fn(doc: Doc) -> Doc | None:
            cur = doc.rec
            # Still the same wait (a delivery or a cancel moves the token on) and the event
            # not taken meanwhile.
            if cur.token != token or not waits_on(cur, topic):
                return None
            if cursor_of(cur, topic) >= seq:
                return None
            return take(doc, topic, seq, value, now)

        _, new = await self.records.mutate(run_id, fn)
        return copy.copy(new.rec) if new is not None else None

    async def append(self, topic: str, value: bytes, now: datetime, retain: float | None) -> Event:
        """Append an event to ``topic``'s log, kept ``retain`` seconds (``None``: only a
        position in the stream's order); the event, with the position of the one before."""
        bucket = self.bucket
        if retain is None:
            # Not kept: a position in the stream's order, and the topic's last kept event
            # read after it (so at or past the one before it: what a delivery needs).
            subject = f"{bucket.prefix}evl.{topic}"
            ack = await bucket.retry("put", bucket.conn.js_publish, subject, value)
            last = await bucket.retry(
                "get", bucket.conn.get_last, bucket.stream, self._subject(topic)
            )
            prev = last.seq if last is not None else 0
            return Event(topic=topic, seq=ack.seq, value=value, at=now, prev=prev)
        ttl = {"Nats-TTL": f"{max(1, math.ceil(retain))}s"}
        for tries in range(MAX_TRIES):
            last = await bucket.retry("get", self._get_last, topic)
            number = 1
            prev = 0
            if last is not None:
                prev = last.seq
                tail = last.subject.rpartition(".")[2]
                # A key put there by hand: any free number will do, and its sequence is one.
                number = int(tail) + 1 if tail.isdigit() else last.seq + 1
            try:
                ack = await bucket.conn.js_publish(
                    f"{bucket.prefix}evt.{topic}.{number}",
                    value,
                    headers={**_EXPECTED_NEW, **ttl},
                )
            except WrongLastSequence:
                # Another emit took that number: read the last one again.
                await after_conflict(tries + 1)
                continue
            expires = now + timedelta(seconds=retain)
            return Event(
                topic=topic, seq=ack.seq, value=value, at=now, prev=prev, expires_at=expires
            )
        raise StoreError(f"topic {topic}: gave up appending after {MAX_TRIES} conflicts")

    # -- deliveries -----------------------------------------------------------------------

    async def deliver(self, event: Event, now: datetime) -> Delivery:
        """Deliver ``event`` to every run waiting on its topic that has not taken it."""
        # Every listed run is asked (the delivery is conditional): a document read from a
        # lagging replica may not show yet the wait its entry was written for. All of
        # them in one call, ``_DELIVER_AT_ONCE`` at a time: the listing is the cost.
        listed = await self.index.listed(f"idx.watch.{event.topic}.*.*")
        resumed: list[str] = []
        limiter = anyio.CapacityLimiter(_DELIVER_AT_ONCE)

        async def deliver(run_id: str) -> None:
            async with limiter:
                done = await self._deliver_one(run_id, event, now)
                if done == "resumed":
                    resumed.append(run_id)
                elif done == "not_waiting":
                    for key in listed[run_id]:
                        await self.index.clean(key, run_id)

        async with anyio.create_task_group() as tg:
            for run_id in listed:
                tg.start_soon(deliver, run_id)
        return Delivery(resumed=resumed)

    async def _deliver_one(
        self, run_id: str, event: Event, now: datetime
    ) -> Literal["resumed", "taken", "not_waiting"]:
        """One conditional delivery of ``event`` to ``run_id``: ``"resumed"``, or nothing
        done because the run has taken the event already or does not wait on its topic."""
        looked: Looked = {}
        for _ in range(MAX_TRIES):
            need: list[tuple[str, int]] = []
            fn = _delivery(event, now, looked, need)
            old, new = await self.records.mutate(run_id, fn)
            if new is not None:
                return "taken" if new.rec.paused else "resumed"
            if not need:
                waiting = old is not None and waits_on(old.rec, event.topic)
                return "taken" if waiting else "not_waiting"
            for topic, after in need:
                looked[topic, after] = await self.next_kept(topic, after)
        raise StoreError(f"run {run_id}: gave up delivering after {MAX_TRIES} tries")

    # -- messages -------------------------------------------------------------------------

    async def send(
        self, run_id: str, topic: str, value: bytes, now: datetime, key: str | None
    ) -> SendResult:
        """Put a message in ``run_id``'s mailbox, or give it to the run's wait on
        ``topic`` at once (see :meth:`~stemd._store.base.Store.send_message`)."""
        outcome: Literal["ended", "duplicate"] = "ended"
        took = False

        def fn(doc: Doc) -> Doc | None:
            nonlocal outcome, took
            rec = doc.rec
            if key is not None and key in doc.keys:
                outcome = "duplicate"
                return None
            if rec.status.is_terminal:
                outcome = "ended"
                return None
            took = waits_on(rec, topic) and not rec.paused
            if took:
                new = take(doc, topic, None, value, now)
            else:
                new = docs.replace(doc, rec)
                new.mail = [*doc.mail, Mail(topic, value)]
            if key is not None:
                new.keys = [*doc.keys, key]
            return new

        old, new = await self.records.mutate(run_id, fn)
        if old is None:
            return SendResult(outcome="not_found")
        if new is None:
            return SendResult(outcome=outcome, record=copy.copy(old.rec))
        return SendResult(outcome="accepted", resumed=took, record=copy.copy(new.rec))

    # -- the waiting runs -----------------------------------------------------------------

    async def waiting(self, topic: str, limit: int, after: int | None) -> Page:
        """A page of the runs waiting on ``topic``, in creation order, from past the
        position ``after`` on."""
        waiting = sorted(
            (doc.order, doc.rec)
            for _, _, doc in await self.index.indexed(f"idx.watch.{topic}.*.*", "watch")
            if waits_on(doc.rec, topic) and (after is None or doc.order > after)
        )
        page = waiting[:limit]
        following = page[-1][0] if len(waiting) > limit else None
        return Page(records=[rec for _, rec in page], next=following)
