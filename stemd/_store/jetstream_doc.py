"""The run document of the JetStream KV store: what ``run.<run_id>`` holds, its encoding,
and the index entries a run's record calls for (see :mod:`stemd._store.jetstream`)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from stemd._errors import DECODE_ERRORS, StoreError
from stemd._model import RunStatus
from stemd._store.base import Checkpoint, RunRecord, topics_of

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "Doc",
    "Mail",
    "checkpoints",
    "decode",
    "encode",
    "entry_base",
    "entry_run",
    "ms",
    "parse_time",
    "replace",
    "wanted",
    "with_checkpoints",
]

_LIVE = (RunStatus.PENDING, RunStatus.RUNNING)


class Mail(msgspec.Struct, array_like=True):
    """A message in a run's mailbox, not taken yet."""

    topic: str
    value: bytes


class Doc(msgspec.Struct, kw_only=True):
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
    mail: list[Mail] = msgspec.field(default_factory=list)
    keys: list[str] = msgspec.field(default_factory=list)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Doc)


def encode(doc: Doc) -> bytes:
    """The document's bytes."""
    return _encoder.encode(doc)


def decode(data: bytes, seq: int) -> Doc:
    """The document stored at stream sequence ``seq``.

    Raises:
        StoreError: the bytes are not a run document.
    """
    try:
        doc = _decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise StoreError(f"undecodable run document at sequence {seq}: {exc}") from None
    if doc.order == 0:
        doc.order = seq  # never rewritten since its creation
    if doc.rec.event_floor == 0:
        doc.rec.event_floor = doc.order  # events are ordered as the stream's writes
    return doc


def ms(at: datetime) -> int:
    """``at`` in whole milliseconds since the epoch (timer entries are named by it)."""
    return math.floor(at.timestamp() * 1000)


def wanted(rec: RunRecord) -> dict[str, str]:
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
        out["timer"] = f"idx.timer.{ms(rec.timer_at)}.{rid}"
    if rec.parent_run_id is not None:
        out["parent"] = f"idx.parent.{rec.parent_run_id}.{rid}"
    return out


def entry_base(key: str) -> str:
    """An index entry's key without its nonce."""
    return key.rpartition(".")[0]


def entry_run(key: str) -> str:
    """The run id an index entry lists (the token before its nonce)."""
    return entry_base(key).rpartition(".")[2]


def parse_time(stamp: str) -> datetime | None:
    """An RFC 3339 time with up to nanoseconds, as the server writes it."""
    try:
        head, dot, frac = stamp.rstrip("Z").partition(".")
        text = head + (("." + frac[:6]) if dot else "") + "+00:00"
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def replace(
    doc: Doc,
    rec: RunRecord,
    cps: dict[str, bytes] | None = None,
    cpt: dict[str, datetime] | None = None,
) -> Doc:
    """``doc`` with ``rec`` (and ``cps``, ``cpt`` when given)."""
    return Doc(
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


def with_checkpoints(
    doc: Doc, rec: RunRecord, written: Iterable[tuple[str, bytes]], now: datetime
) -> Doc:
    """``doc`` with ``rec`` and the checkpoints ``written`` (name, value) recorded at
    ``now`` (a replaced checkpoint keeps its place)."""
    cps = dict(doc.cps)
    cpt = dict(doc.cpt)
    for name, value in written:
        cps[name] = value
        cpt[name] = now
    return replace(doc, rec, cps, cpt)


def checkpoints(doc: Doc) -> list[Checkpoint]:
    """The document's checkpoints in write order, with their times."""
    times = doc.cpt
    return [Checkpoint(n, v, times.get(n)) for n, v in doc.cps.items()]
