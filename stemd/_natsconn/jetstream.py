"""The parts of the JetStream API stemd needs, over core NATS: publish with
acknowledgements, stream and consumer management, direct gets (one subject, or the last
message of many at once), reads by the stream's leader, message deletion and purges.
Replies are decoded with msgspec, on one long-lived decoder per reply type.

Every public coroutine is an entry point of the adapter (see
:mod:`stemd._natsconn.boundary`): only stemd's errors come out.
"""

from __future__ import annotations

import base64
from typing import Any

import anyio
import msgspec
import nats.errors

from stemd._errors import DECODE_ERRORS, TransportError
from stemd._natsconn.boundary import JetStreamApiError, NoResponders, api_error, boundary
from stemd._natsconn.connection import CoreConnection
from stemd._natsconn.messages import NatsMsg, PubAck, StoredMsg, stored

__all__ = ["NatsConnection"]


class _ApiErr(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubReply(msgspec.Struct, frozen=True):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiErr | None = None


class _ApiReply(msgspec.Struct, frozen=True):
    error: _ApiErr | None = None


_pub_decoder = msgspec.json.Decoder(_PubReply)
_err_decoder = msgspec.json.Decoder(_ApiReply)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

# JetStream's error codes stemd reacts to.
_STREAM_NAME_IN_USE = 10058
_CONSUMER_EXISTS = 10148
_NO_MESSAGE_FOUND = 10037
_SEQUENCE_NOT_FOUND = 10057


def _raise_api_error(err: _ApiErr | None) -> None:
    if err is not None:
        raise api_error(err.code, err.err_code, err.description)


class NatsConnection(CoreConnection):
    """A connected NATS client with stemd's conventions, speaking JetStream too.

    Args:
        nc: the connected nats-py client (made by :func:`~stemd._natsconn.open_connection`).
        url: the server URL, for messages (credentials in it are masked).
        timeout: default seconds to wait for a reply.
    """

    @boundary("publish to the stream of {subject}")
    async def js_publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> PubAck:
        """Publish into a stream and wait for its acknowledgement.

        Raises:
            WrongLastSequence: an expected-last-sequence header did not match.
            JetStreamApiError: the stream refused the message.
            NoResponders: no stream stores ``subject``.
            TransportError: no acknowledgement in time, or the connection failed.
        """
        try:
            reply = await self._request(subject, payload, headers, timeout)
        except nats.errors.NoRespondersError as exc:
            raise NoResponders(f"no stream stores {subject}") from exc
        try:
            ack = _pub_decoder.decode(reply.data)
        except DECODE_ERRORS as exc:
            raise TransportError(f"bad publish acknowledgement: {reply.data[:200]!r}") from exc
        _raise_api_error(ack.error)
        return PubAck(ack.stream, ack.seq, ack.duplicate)

    @boundary("JetStream API {path}")
    async def js_api(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``$JS.API.<path>`` with a JSON body; return the decoded reply.

        Raises:
            JetStreamApiError: the API answered with an error.
        """
        payload = b"" if body is None else _encoder.encode(body)
        reply = await self._request(f"$JS.API.{path}", payload, None, timeout)
        try:
            error = _err_decoder.decode(reply.data).error
            decoded = _any_decoder.decode(reply.data)
        except DECODE_ERRORS as exc:
            raise TransportError(f"bad JetStream API reply: {reply.data[:200]!r}") from exc
        _raise_api_error(error)
        return decoded

    @boundary("create or update a stream")
    async def ensure_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        """Create the stream, or update it to ``config`` when it exists."""
        name = config["name"]
        try:
            info: dict[str, Any] = await self.js_api(f"STREAM.CREATE.{name}", config)
            return info
        except JetStreamApiError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:  # (with another config)
                raise
        info = await self.js_api(f"STREAM.UPDATE.{name}", config)
        return info

    @boundary("create or update a consumer of {stream}")
    async def ensure_consumer(self, stream: str, config: dict[str, Any]) -> dict[str, Any]:
        """Create the durable consumer, or update it to ``config`` when it exists."""
        name = config["durable_name"]
        body = {"stream_name": stream, "config": config}
        try:
            info: dict[str, Any] = await self.js_api(
                f"CONSUMER.CREATE.{stream}.{name}", {**body, "action": "create"}
            )
            return info
        except JetStreamApiError as exc:
            if exc.err_code != _CONSUMER_EXISTS:
                raise
        info = await self.js_api(f"CONSUMER.CREATE.{stream}.{name}", {**body, "action": "update"})
        return info

    @boundary("direct get of {subject} from {stream}")
    async def direct_get(self, stream: str, subject: str) -> StoredMsg | None:
        """The last message on ``subject`` (a direct get), or ``None``."""
        reply = await self._request(f"$JS.API.DIRECT.GET.{stream}.{subject}")
        return stored(reply)

    @boundary("message get from {stream}")
    async def leader_get(
        self, stream: str, subject: str | None = None, *, seq: int | None = None
    ) -> StoredMsg | None:
        """The last message on ``subject`` (or the message ``seq``), read by the stream's
        leader, or ``None``.

        Slower than :meth:`direct_get`, which any replica of a replicated stream may
        answer from a state that lags behind the last acknowledged write: this one sees
        every acknowledged write (headers are not returned)."""
        query: dict[str, Any] = {"seq": seq} if seq is not None else {"last_by_subj": subject}
        return await self._leader_query(stream, query)

    @boundary("next message of {subject} from {stream}")
    async def get_next(
        self, stream: str, subject: str, seq: int, *, leader: bool = False
    ) -> StoredMsg | None:
        """The first message at or after sequence ``seq`` on ``subject`` (a filter: wildcards
        allowed), or ``None``. With ``leader`` the stream's leader answers (it has every
        acknowledged write); otherwise any replica may, by a direct get."""
        query = {"seq": max(1, seq), "next_by_subj": subject}
        if not leader:
            reply = await self._request(f"$JS.API.DIRECT.GET.{stream}", _encoder.encode(query))
            return stored(reply)
        return await self._leader_query(stream, query)

    @boundary("last message of {subject} from {stream}")
    async def get_last(
        self, stream: str, subject: str, *, leader: bool = False
    ) -> StoredMsg | None:
        """The last message on ``subject`` (a filter: wildcards allowed), or ``None``; with
        ``leader``, as read by the stream's leader."""
        query = {"last_by_subj": subject}
        if not leader:
            reply = await self._request(f"$JS.API.DIRECT.GET.{stream}", _encoder.encode(query))
            return stored(reply)
        return await self._leader_query(stream, query)

    async def _leader_query(self, stream: str, query: dict[str, Any]) -> StoredMsg | None:
        """A message get answered by the stream's leader (called inside an entry point)."""
        try:
            reply = await self.js_api(f"STREAM.MSG.GET.{stream}", query)
        except JetStreamApiError as exc:
            if exc.err_code == _NO_MESSAGE_FOUND:
                return None
            raise
        try:
            msg = reply["message"]
            return StoredMsg(
                subject=msg["subject"],
                seq=int(msg["seq"]),
                data=base64.b64decode(msg.get("data") or ""),
                time=msg.get("time", ""),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TransportError(f"message get: unexpected reply {str(reply)[:200]}") from exc

    @boundary("batched direct get from {stream}")
    async def direct_get_last_many(
        self, stream: str, subjects: list[str], *, timeout: float | None = None
    ) -> list[StoredMsg] | None:
        """The last message of every subject matching ``subjects`` (filters allowed), in
        stream order; ``None`` when more than the server's limit (1024) match.

        Raises:
            TransportError: the replies did not all come in time (``timeout``, default
                the connection's, at least 10 s), or the connection failed.
        """
        if not subjects:
            return []
        out: list[StoredMsg] = []
        async with self._open_replies(buffer=100_000) as (inbox, replies):
            body = _encoder.encode({"multi_last": subjects, "batch": 100_000})
            await self.publish(f"$JS.API.DIRECT.GET.{stream}", body, reply=inbox)
            with anyio.fail_after(timeout or max(self.timeout, 10.0)):
                async for msg in replies:
                    if _batch_ended(msg, out):
                        return out if msg.status != "413" else None
        return out  # pragma: no cover - the stream only closes on exit

    @boundary("list the subjects of {stream}")
    async def stream_subjects(self, stream: str, filter: str) -> dict[str, int]:
        """Subjects of the stream matching ``filter`` that hold messages, with their counts."""
        out: dict[str, int] = {}
        offset = 0
        while True:
            info = await self.js_api(
                f"STREAM.INFO.{stream}",
                {"subjects_filter": filter, "offset": offset},
                timeout=max(self.timeout, 10.0),
            )
            subjects = info.get("state", {}).get("subjects") or {}
            out.update(subjects)
            total = info.get("total", 0)
            limit = info.get("limit", 0)
            offset += len(subjects)
            if not subjects or not limit or offset >= total:
                return out

    @boundary("delete message {seq} of {stream}")
    async def delete_msg(self, stream: str, seq: int) -> bool:
        """Delete one message; ``False`` if it was already gone."""
        try:
            await self.js_api(f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True})
        except JetStreamApiError as exc:
            gone = exc.err_code in (_NO_MESSAGE_FOUND, _SEQUENCE_NOT_FOUND)
            if gone or exc.code in (400, 404):
                return False
            raise
        return True

    @boundary("purge {subject} from {stream}")
    async def purge_subject_nowait(self, stream: str, subject: str) -> None:
        """Ask for every message on ``subject`` to be purged, without waiting."""
        await self.publish(
            f"$JS.API.STREAM.PURGE.{stream}",
            _encoder.encode({"filter": subject}),
            reply=self._void,
        )


def _batch_ended(msg: NatsMsg, out: list[StoredMsg]) -> bool:
    """Take one reply of a batched direct get: a message goes into ``out``; whether it
    was the status that ends the batch (204 or 404: all sent; 413: too many subjects)."""
    status = msg.status
    if status is None:
        found = stored(msg)
        if found is not None:
            out.append(found)
        return False
    if status in ("204", "404", "413"):
        return True
    raise TransportError(f"direct get: status {status} {msg.headers}")
