"""The JetStream KV store's bucket over one connection: requests retried while NATS is
away, keys listed by subject filter, index entries put (acknowledged) and forgotten, and
conditional writes whose lost answer is read back. Nothing here knows what a run is."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import structlog

from stemd._errors import StoreError, TransportError
from stemd._natsconn import (
    EXPECTED_LAST_SUBJECT_SEQ,
    EXPECTED_LAST_SUBJECT_SEQ_SUBJECT,
    JetStreamApiError,
    NatsConnection,
    StoredMsg,
    WrongLastSequence,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

__all__ = ["Bucket", "transient"]

log = structlog.get_logger("stemd.store.jetstream")

T = TypeVar("T")

# Subjects asked for in one batched direct get.
_CHUNK = 1000


def transient(exc: TransportError) -> bool:
    """Whether retrying may help: a lost connection or reply, or JetStream not ready;
    not a definite refusal by the stream."""
    if isinstance(exc, JetStreamApiError):
        return exc.code == 503
    return True


class Bucket:
    """The KV bucket ``name`` (stream ``KV_<name>``) once a connection is attached.

    Args:
        name: the bucket's name.
        replicas: the stream's replicas: with more than one, reads that must see every
            acknowledged write go to the stream's leader.
        retry_for: seconds a request keeps retrying while NATS is unreachable.
    """

    def __init__(self, name: str, *, replicas: int, retry_for: float) -> None:
        self.name = name
        self.stream = f"KV_{name}"
        self.prefix = f"$KV.{name}."
        self.replicas = replicas
        self.retry_for = retry_for
        self._conn: NatsConnection | None = None

    @property
    def conn(self) -> NatsConnection:
        """The connection.

        Raises:
            StoreError: the store is not open.
        """
        if self._conn is None:
            raise StoreError("the JetStream store is not open")
        return self._conn

    @property
    def is_open(self) -> bool:
        """Whether a connection is attached."""
        return self._conn is not None

    def attach(self, conn: NatsConnection | None) -> NatsConnection | None:
        """Use ``conn`` from now on (``None``: none); the connection used so far."""
        old, self._conn = self._conn, conn
        return old

    def key(self, subject: str) -> str:
        """The key of a subject of the bucket."""
        return subject[len(self.prefix) :]

    async def retry(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
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
                if not transient(exc) or now + delay > give_up:
                    raise
                log.debug("NATS unavailable; retrying", op=what, error=str(exc))
                await anyio.sleep(delay)
                delay = min(1.0, delay * 2)

    # -- reads ----------------------------------------------------------------------------

    async def get(self, key: str, *, leader: bool = False) -> StoredMsg | None:
        """The message of ``key``. Any replica of a replicated bucket may answer, from a
        state that lags behind the last acknowledged write; with ``leader`` the stream's
        leader answers, and every acknowledged write is seen."""
        if leader and self.replicas > 1:
            return await self.retry("get", self.conn.leader_get, self.stream, self.prefix + key)
        return await self.retry("get", self.conn.direct_get, self.stream, self.prefix + key)

    async def get_many(self, keys: Iterable[str]) -> list[StoredMsg]:
        """The messages of ``keys`` (those that exist), read in batches."""
        subjects = [self.prefix + key for key in keys]
        out: list[StoredMsg] = []
        for i in range(0, len(subjects), _CHUNK):
            msgs = await self.retry(
                "get", self.conn.direct_get_last_many, self.stream, subjects[i : i + _CHUNK]
            )
            out += msgs or ()
        return out

    async def get_matching(self, pattern: str) -> list[StoredMsg] | None:
        """The messages of the keys matching ``pattern`` in one batched direct get, or
        ``None`` when more match than one answers (1024)."""
        return await self.retry(
            "list", self.conn.direct_get_last_many, self.stream, [self.prefix + pattern]
        )

    async def keys(self, pattern: str) -> list[str]:
        """Keys matching a subject filter (without the bucket prefix)."""
        # A batched direct get is far cheaper for the server than a stream info with
        # subjects; it answers up to 1024 subjects, beyond which the stream info lists them.
        found = await self.get_matching(pattern)
        if found is not None:
            return [self.key(m.subject) for m in found]
        return await self._subjects(pattern)

    async def keys_from_leader(self, pattern: str) -> list[str]:
        """As :meth:`keys`, but on a replicated bucket listed by the leader (a batched
        direct get may be answered by a lagging replica), so that every key acknowledged
        before the call is there."""
        if self.replicas > 1:
            return await self._subjects(pattern)
        return await self.keys(pattern)

    async def _subjects(self, pattern: str) -> list[str]:
        found = await self.retry(
            "list", self.conn.stream_subjects, self.stream, self.prefix + pattern
        )
        return [self.key(s) for s in found]

    # -- writes ---------------------------------------------------------------------------

    async def put_entries(self, keys: list[str], fence: tuple[str, int] | None = None) -> None:
        """Store empty keys (index entries), all at once, and wait until the stream has
        acknowledged each. With ``fence`` (a key and its revision, 0: absent), the first
        is stored only if that key is still at that revision.

        Raises:
            WrongLastSequence: the fence's key has another revision.
        """
        errors: list[Exception] = []
        conn = self.conn

        async def publish(subject: str, headers: dict[str, str] | None) -> None:
            await conn.js_publish(subject, b"", headers=headers)

        async def put(key: str, headers: dict[str, str] | None) -> None:
            try:
                await self.retry("put", publish, self.prefix + key, headers)
            except Exception as exc:
                errors.append(exc)

        first: dict[str, str] | None = None
        if fence is not None:
            first = {
                EXPECTED_LAST_SUBJECT_SEQ: str(fence[1]),
                EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: self.prefix + fence[0],
            }
        if len(keys) == 1:
            await put(keys[0], first)
        elif keys:
            async with anyio.create_task_group() as tg:
                for i, key in enumerate(keys):
                    tg.start_soon(put, key, first if i == 0 else None)
        if errors:
            raise errors[0]

    async def forget(self, key: str) -> None:
        """Delete a key without waiting (keys of index entries are never reused: purging
        the subject removes exactly that entry). A lost deletion is only logged."""
        try:
            await self.conn.purge_subject_nowait(self.stream, self.prefix + key)
        except Exception as exc:
            log.debug("index entry not deleted", key=key, error=repr(exc))

    async def delete(self, seq: int) -> bool:
        """Delete the message ``seq``; ``False`` if it was gone already."""
        return await self.retry("delete", self.conn.delete_msg, self.stream, seq)

    async def cas(self, key: str, rev: int, data: bytes) -> int:
        """Publish ``data`` as ``key`` if its revision is still ``rev`` (0: absent); the
        new revision. When the answer is lost, read back (from the leader on a replicated
        bucket, which has every acknowledged write): ``data`` must be unique (a nonce in
        it) to tell whether the write happened.

        Raises:
            WrongLastSequence: another revision was there.
        """
        subject = self.prefix + key
        headers = {EXPECTED_LAST_SUBJECT_SEQ: str(rev)}
        give_up = 0.0
        delay = 0.05
        while True:
            try:
                ack = await self.conn.js_publish(subject, data, headers=headers)
                return ack.seq
            except TransportError as exc:
                if not transient(exc):
                    raise
                error = exc
            give_up = give_up or time.monotonic() + self.retry_for
            # Unknown outcome: find out, retrying while NATS is away.
            msg, delay = await self._read_back(key, error, give_up, delay)
            if msg is not None and msg.data == data:
                return msg.seq  # it was written
            current = msg.seq if msg is not None else 0
            if current != rev:
                raise WrongLastSequence(400, 10071, f"wrong last sequence: {current}")
            log.debug("NATS unavailable; retrying a write", key=key, error=str(error))

    async def _read_back(
        self, key: str, error: TransportError, give_up: float, delay: float
    ) -> tuple[StoredMsg | None, float]:
        """The message of ``key`` read back after a write of unknown outcome, and the
        next backoff; retried (raising the last error) until ``give_up``."""
        conn = self.conn
        read = conn.leader_get if self.replicas > 1 else conn.direct_get
        while True:
            if time.monotonic() + delay > give_up:
                raise error
            await anyio.sleep(delay)
            delay = min(1.0, delay * 2)
            try:
                return await read(self.stream, self.prefix + key), delay
            except TransportError as exc:
                if not transient(exc):
                    raise
                error = exc
