"""Run documents in the JetStream KV bucket: read (from any replica, or the stream's
leader), cached between this process's own writes, written by compare-and-set on the
key's revision with their index entries kept in step, changed atomically, deleted.

The revision is the fencing primitive: every change is a read-modify-write of
``run.<run_id>`` that fails when someone else wrote first (and is then retried on a fresh
read). The run's token is checked inside the document by the change itself.
"""

from __future__ import annotations

import random
import secrets
from collections import OrderedDict
from typing import TYPE_CHECKING

import anyio

from stemd._errors import LeaseLost, PayloadError, StoreError
from stemd._natsconn import StoredMsg, WrongLastSequence
from stemd._store import jetstream_doc as docs
from stemd._store.jetstream_doc import Doc

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from stemd._store.jetstream_bucket import Bucket

__all__ = ["MAX_TRIES", "FenceMoved", "Records", "after_conflict"]

# Conflicting writes an operation meets before it gives up.
MAX_TRIES = 50
# The longest pause between two tries of a compare-and-set that keeps conflicting.
_MOST_PAUSE = 0.1


async def after_conflict(tries: int) -> None:
    """Pause before trying a compare-and-set again, its ``tries``-th try (counted from 1)
    having conflicted: at once after the first, then for a random share of a bound
    doubling from 1 ms up to 0.1 s. Writers of one hot key (a limit's slots and line, a
    topic) so take turns instead of all trying again together, where the last of a
    hundred would meet a hundred conflicts."""
    if tries > 1:
        await anyio.sleep(random.uniform(0, min(_MOST_PAUSE, 0.0005 * 2**tries)))


Found = tuple[int, Doc]


class FenceMoved(StoreError):
    """Raised when a write's fence (another key's revision) no longer holds: nothing of
    it was stored."""


class Records:
    """The run documents of ``bucket``.

    Args:
        bucket: the bucket.
        cache_size: documents remembered between this process's own writes (saves a read
            before each compare-and-set; a stale entry only costs a retry).
    """

    def __init__(self, bucket: Bucket, *, cache_size: int) -> None:
        self.bucket = bucket
        # The largest document a write may store (set from the server's limit on open).
        self.max_doc = 1024 * 1024
        self._cache: OrderedDict[str, Found] = OrderedDict()
        self._cache_size = cache_size
        self._nonce_prefix = secrets.token_hex(3)
        self._nonce = 0

    # -- the cache ------------------------------------------------------------------------

    def cached(self, run_id: str) -> Found | None:
        """The revision and document last read or written by this process, if kept."""
        return self._cache.get(run_id)

    def remember(self, run_id: str, rev: int, doc: Doc) -> None:
        """Keep the run's revision and document (the least recently used go first)."""
        self._cache[run_id] = (rev, doc)
        self._cache.move_to_end(run_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def forget(self, run_id: str) -> None:
        """Forget what is kept of the run."""
        self._cache.pop(run_id, None)

    def clear(self) -> None:
        """Forget everything kept."""
        self._cache.clear()

    # -- reads ----------------------------------------------------------------------------

    async def read(self, run_id: str, *, leader: bool = False) -> Found | None:
        """The run's revision and document. Any replica of a replicated bucket may answer
        a direct get, from a state that lags behind the last acknowledged write; with
        ``leader`` the stream's leader answers, and every acknowledged write is seen."""
        msg = await self.bucket.get(f"run.{run_id}", leader=leader)
        if msg is None:
            self.forget(run_id)
            return None
        doc = docs.decode(msg.data, msg.seq)
        self.remember(run_id, msg.seq, doc)
        return msg.seq, doc

    async def lookup(self, run_id: str) -> Found | None:
        """As :meth:`read`, but a run is never reported missing by a lagging replica."""
        found = await self.read(run_id)
        if found is None and self.bucket.replicas > 1:
            found = await self.read(run_id, leader=True)
        return found

    async def read_many(self, run_ids: Iterable[str]) -> dict[str, Found]:
        """The revisions and documents of the runs of ``run_ids`` that exist."""
        keys = [f"run.{rid}" for rid in dict.fromkeys(run_ids)]
        return self._decoded(await self.bucket.get_many(keys))

    async def read_all(self) -> dict[str, Found]:
        """Every run document."""
        found = await self.bucket.get_matching("run.*")
        if found is None:  # more than one batched get returns: list the keys, then read
            return await self.read_many(k[4:] for k in await self.bucket.keys("run.*"))
        return self._decoded(found)

    def _decoded(self, msgs: Iterable[StoredMsg]) -> dict[str, Found]:
        cut = len(self.bucket.prefix) + 4
        return {m.subject[cut:]: (m.seq, docs.decode(m.data, m.seq)) for m in msgs}

    # -- writes ---------------------------------------------------------------------------

    def _next_nonce(self) -> str:
        self._nonce += 1
        return f"{self._nonce_prefix}{self._nonce:x}"

    async def write(
        self,
        run_id: str,
        rev: int,
        old: Doc | None,
        new: Doc,
        fence: tuple[str, int] | None = None,
    ) -> int:
        """Compare-and-set ``new`` over revision ``rev`` (0: create), keeping its index
        entries in step; the new revision. With ``fence`` (a key and its revision) and
        index entries to add, nothing is written unless that key is still at that
        revision when the first entry is.

        An entry is written (and acknowledged) *before* the document that refers to it:
        one sent without waiting could be lost with the connection or the stream's leader
        while the document's write, retried, succeeds, and the run would be missing from
        its index (never swept, woken, or found by an emit). An entry is deleted *after*
        the document stopped referring to it.

        Raises:
            WrongLastSequence: someone else wrote first.
            FenceMoved: the fence's key has another revision.
            PayloadError: the document does not fit in one NATS message.
        """
        bucket = self.bucket
        old_idx = old.idx if old is not None else {}
        idx: dict[str, str] = {}
        added: list[str] = []
        for kind, base in docs.wanted(new.rec).items():
            entry = old_idx.get(kind)
            if entry is None or docs.entry_base(entry) != base:
                entry = f"{base}.{self._next_nonce()}"
                added.append(entry)
            idx[kind] = entry
        new.idx = idx
        new.w = self._next_nonce()
        data = docs.encode(new)
        if len(data) > self.max_doc:
            raise PayloadError(
                f"run {run_id}: its record and checkpoints take {len(data)} bytes, more "
                f"than a NATS message may hold ({self.max_doc}); keep step values small"
            )
        try:
            try:
                await bucket.put_entries(added, fence)
            except WrongLastSequence as exc:  # only a fence is a condition of entries
                raise FenceMoved(f"run {run_id}: {fence} moved") from exc
            seq = await bucket.cas(f"run.{run_id}", rev, data)
        except (WrongLastSequence, FenceMoved):
            # Certainly not written: the new entries belong to nobody. (After a lost
            # connection or a cancellation the write may have happened: keep them;
            # if it did not, they are stale entries that readers ignore and remove.)
            for entry in added:
                await bucket.forget(entry)
            raise
        for kind, entry in old_idx.items():
            if idx.get(kind) != entry:
                await bucket.forget(entry)
        return seq

    async def mutate(
        self, run_id: str, fn: Callable[[Doc], Doc | None]
    ) -> tuple[Doc | None, Doc | None]:
        """Apply ``fn`` to the run's document atomically; return (old, new).

        ``fn`` returns the new document, or ``None`` to change nothing; it may raise
        (LeaseLost...). A change is trusted when the compare-and-set proves the document
        current. A refusal (or a missing run) is trusted only on a document that holds every
        acknowledged write: read again, from the leader on a replicated bucket (a cached
        document may be old, and a lagging replica may answer a direct get).
        """
        cached = self.cached(run_id)
        trusted = False
        leader = False
        for tries in range(MAX_TRIES):
            if cached is None:
                cached = await self.read(run_id, leader=leader)
                trusted = leader or self.bucket.replicas == 1
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
                new_rev = await self.write(run_id, rev, doc, new)
            except WrongLastSequence:
                self.forget(run_id)
                cached = None
                await after_conflict(tries + 1)
                continue
            self.remember(run_id, new_rev, new)
            return doc, new
        raise StoreError(f"run {run_id}: gave up after {MAX_TRIES} conflicting writes")

    async def delete(self, run_id: str, rev: int, doc: Doc) -> bool:
        """Delete the document at revision ``rev`` and its entries; ``False`` if it changed."""
        deleted = await self.bucket.delete(rev)
        self.forget(run_id)
        if deleted:
            for entry in doc.idx.values():
                await self.bucket.forget(entry)
        return deleted
