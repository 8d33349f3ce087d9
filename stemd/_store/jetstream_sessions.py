"""The JetStream KV store's sessions (:mod:`stemd._store.sessions`).

One key per session in the runs' bucket: ``ses.<id>``, the id in unpadded base64url (a
session id may hold characters a KV key may not; the prefix keeps ``run.*`` and ``idx.>``
listings blind to these keys). The value is the
:class:`~stemd._store.sessions.SessionRecord` as JSON; an ended session's key holds an
empty value (and is then purged). A renewal is a compare-and-set on the key's revision,
so that it never brings back a session a peer has ended.

Ending a session looks at the live runs (``idx.live.*.*``) and gives back each one still
held by the session with a compare-and-set of its document.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import msgspec
import structlog

from stemd._errors import DECODE_ERRORS
from stemd._natsconn import WrongLastSequence
from stemd._store import jetstream_doc as docs
from stemd._store.sessions import Released, SessionRecord, apply_takeover, held_by

if TYPE_CHECKING:
    from datetime import datetime

    from stemd._store.jetstream_bucket import Bucket
    from stemd._store.jetstream_doc import Doc
    from stemd._store.jetstream_index import Index

__all__ = ["Sessions", "key"]

log = structlog.get_logger("stemd.store.jetstream")

_PREFIX = "ses."
_decoder = msgspec.json.Decoder(SessionRecord)


def key(session_id: str) -> str:
    """The KV key of session ``session_id``."""
    return _PREFIX + base64.urlsafe_b64encode(session_id.encode()).decode().rstrip("=")


class Sessions:
    """The session keys of ``index``'s bucket."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.bucket: Bucket = index.bucket

    async def put(self, session: SessionRecord) -> None:
        subject = self.bucket.prefix + key(session.session_id)
        await self.bucket.retry("put", self.bucket.conn.js_publish, subject, _encode(session))

    async def renew(self, session: SessionRecord) -> bool:
        name = key(session.session_id)
        msg = await self.bucket.get(name, leader=True)
        if msg is None or not msg.data:
            return False
        try:
            await self.bucket.cas(name, msg.seq, _encode(session))
        except WrongLastSequence:
            return False  # ended (or renewed by another process under the same id)
        return True

    async def all(self) -> list[SessionRecord]:
        found = await self.bucket.get_matching(_PREFIX + "*")
        if found is None:  # more than one batched get answers
            found = await self.bucket.get_many(await self.bucket.keys(_PREFIX + "*"))
        out = []
        for msg in found:
            if not msg.data:
                continue
            try:
                out.append(_decoder.decode(msg.data))
            except DECODE_ERRORS as exc:
                log.warning("undecodable session entry", subject=msg.subject, error=str(exc))
        return out

    async def end(self, session_id: str, now: datetime) -> list[Released]:
        out = []
        records = self.index.records
        for run_id, _, doc in await self.index.indexed("idx.live.*.*", "live"):
            if not held_by(doc.rec, session_id):
                continue

            def fn(doc: Doc) -> Doc | None:
                if not held_by(doc.rec, session_id):
                    return None
                return docs.replace(doc, apply_takeover(doc.rec, now))

            _, new = await records.mutate(run_id, fn)
            if new is not None:
                out.append(Released(run_id=run_id, queue=new.rec.queue, token=new.rec.token))
        name = key(session_id)
        await self.bucket.retry("put", self.bucket.conn.js_publish, self.bucket.prefix + name, b"")
        await self.bucket.forget(name)
        return out


def _encode(session: SessionRecord) -> bytes:
    # The renewal's compare-and-set reads back a write of unknown outcome by its bytes:
    # the beat makes every renewal's bytes unique.
    return msgspec.json.encode(session)
