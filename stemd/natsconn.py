"""The one module that talks to nats-py.

Everything else in stemd goes through :class:`NatsConnection`, which

- connects with stemd's options: a bounded first connection (an unreachable URL is a
  clear :class:`~stemd.errors.TransportError` at start), then reconnection forever;
- logs connection trouble through structlog instead of nats-py's default tracebacks;
- turns every nats-py exception into a :class:`~stemd.errors.TransportError` (or a
  :class:`JetStreamApiError` carrying the server's error code);
- never lets a nats-py callback do work: callbacks only forward messages and connection
  events into bounded anyio memory streams that stemd's own tasks read;
- speaks the parts of the JetStream API stemd needs (publish with acks, stream and
  consumer management, direct gets, message deletion) with msgspec, on one long-lived
  decoder per reply type.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec
import nats
import nats.aio.client
import nats.errors
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from stemd.errors import DECODE_ERRORS, TransportError
from stemd.natsauth import NatsAuth, redact_url, url_has_credentials

__all__ = [
    "ConnectionEvent",
    "JetStreamApiError",
    "NatsConnection",
    "NatsMsg",
    "PermissionDenied",
    "PubAck",
    "StoredMsg",
    "Subscription",
    "WrongLastSequence",
    "open_connection",
    "split_url",
]

log = structlog.get_logger("stemd.nats")

# Header names of the JetStream protocol.
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
SCHEDULE = "Nats-Schedule"
SCHEDULE_TARGET = "Nats-Schedule-Target"

_WRONG_LAST_SEQUENCE = (10071, 10164)


class JetStreamApiError(TransportError):
    """Raised when the JetStream API answers with an error."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"JetStream error {code}/{err_code}: {description}")
        self.code = code
        self.err_code = err_code
        self.description = description


class WrongLastSequence(JetStreamApiError):
    """Raised when a conditional publish found another last sequence (a CAS conflict)."""


class PermissionDenied(TransportError):
    """Raised when the server refused a publish or subscription: the connection's user
    lacks the permission (see docs/reference/security.md)."""

    non_retryable = True


# The server's words: -ERR 'Permissions Violation for Publish to "stem.api.cancel"'.
_VIOLATION = re.compile(
    r'Permissions Violation for (Publish to|Subscription to|Publish with Reply of) "([^"]*)"', re.I
)


class PubAck(msgspec.Struct, frozen=True):
    """The stream's acknowledgement of a publish."""

    stream: str
    seq: int
    duplicate: bool = False


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


class _Client(nats.aio.client.Client):
    """nats-py's client, reading subjects that are not UTF-8.

    The server relays any bytes as a subject, and nats-py decodes a message's subject
    strictly: one message published to ``stem.submit.<not UTF-8>`` (or a request on such a
    ``stem.api`` subject) would stop its read loop for good, leaving a connection that
    looks alive and reads nothing. Invalid bytes read as U+FFFD here, so such a message
    is refused like any other bad input. (This overrides a private method of nats-py 2.x,
    hence the ``<3`` pin; tests/integration/test_nats_submit_events.py sends such subjects.)
    """

    def _build_message(
        self,
        sid: int,
        subject: bytes,
        reply: bytes,
        data: bytes,
        headers: dict[str, str] | None,
    ) -> Any:
        return self.msg_class(
            subject=subject.decode(errors="replace"),
            reply=reply.decode(errors="replace"),
            data=data,
            headers=headers,
            _client=self,
            _sid=sid,
        )


class NatsMsg(msgspec.Struct, frozen=True):
    """A received message, detached from nats-py."""

    subject: str
    data: bytes
    reply: str = ""
    headers: dict[str, str] | None = None

    @property
    def status(self) -> str | None:
        """The status code of a control message (``"408"``, ``"204"``...), else ``None``."""
        if self.headers is None:
            return None
        return self.headers.get("Status")

    def header(self, name: str) -> str | None:
        """One header's value, or ``None``."""
        if self.headers is None:
            return None
        return self.headers.get(name)


class StoredMsg(msgspec.Struct, frozen=True):
    """A message read back from a stream by a direct get."""

    subject: str
    seq: int
    data: bytes
    time: str = ""
    headers: dict[str, str] | None = None


class ConnectionEvent(msgspec.Struct, frozen=True):
    """A change of the connection's state: ``disconnected``, ``reconnected`` or ``closed``."""

    kind: str


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """The server URL without its query string, and the query as a dict."""
    parts = urlsplit(url)
    query: dict[str, str] = {}
    for item in parts.query.split("&"):
        if item:
            key, _, value = item.partition("=")
            query[key] = value
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), query


def _headers(raw: Any) -> dict[str, str] | None:
    if not raw:
        return None
    return {str(k): str(v) for k, v in raw.items()}


def _detach(msg: Any) -> NatsMsg:
    return NatsMsg(
        subject=msg.subject, data=msg.data, reply=msg.reply or "", headers=_headers(msg.headers)
    )


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn nats-py's exceptions raised inside the block into :class:`TransportError`."""
    try:
        yield
    except TransportError:
        raise
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        # nats.errors.TimeoutError is also an asyncio.TimeoutError, i.e. TimeoutError.
        raise TransportError(f"{what}: {type(exc).__name__}: {exc}") from exc


class Subscription:
    """A subscription whose messages arrive in a bounded memory stream."""

    def __init__(
        self,
        sub: Any,
        receive: MemoryObjectReceiveStream[NatsMsg],
        send: MemoryObjectSendStream[NatsMsg],
    ) -> None:
        self.subject: str = sub.subject
        self._sub = sub
        self._receive = receive
        self._send = send

    @property
    def messages(self) -> MemoryObjectReceiveStream[NatsMsg]:
        """The stream of received messages."""
        return self._receive

    async def receive(self) -> NatsMsg:
        """The next message."""
        return await self._receive.receive()

    async def unsubscribe(self) -> None:
        """Stop receiving; messages already buffered stay readable."""
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await self._sub.unsubscribe()
        self._send.close()
        self._receive.close()


class NatsConnection:
    """A connected NATS client with stemd's conventions.

    Args:
        nc: the connected nats-py client (made by :func:`open_connection`).
        url: the server URL, for messages (credentials in it are masked).
        timeout: default seconds to wait for a reply.
    """

    def __init__(self, nc: Any, url: str, timeout: float) -> None:
        self._nc = nc
        self.url = redact_url(url)
        self.timeout = timeout
        self._events_send, self._events = anyio.create_memory_object_stream[ConnectionEvent](64)
        self._reply_prefix = f"_INBOX.{secrets.token_hex(8)}."
        self._void = f"_INBOX.{secrets.token_hex(8)}.void"
        self._replies: dict[str, MemoryObjectSendStream[NatsMsg]] = {}
        self._reply_sub: Any = None
        self._closed = False
        # Times the client reconnected: pull requests and server state may be gone.
        self.reconnects = 0
        # Requests in flight by subject, so that the server's refusal of one (which it
        # reports out of band, as an error on the connection) ends it at once.
        self._requests: dict[str, set[anyio.CancelScope]] = {}
        self._denied: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """Whether the client is connected right now (not reconnecting)."""
        return bool(self._nc.is_connected)

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts."""
        return int(self._nc.max_payload or 1024 * 1024)

    @property
    def events(self) -> MemoryObjectReceiveStream[ConnectionEvent]:
        """Connection state changes, for whoever wants to react (lossy when nobody reads)."""
        return self._events

    def _event(self, kind: str) -> None:
        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
            self._events_send.send_nowait(ConnectionEvent(kind))

    def _permission_violation(self, text: str) -> bool:
        """The server refused a publish or a subscription: end the requests it dooms (a
        publish to their subject; any reply inbox refused dooms them all). Whether
        ``text`` was a permission violation."""
        match = _VIOLATION.search(text)
        if match is None:
            return False
        kind, subject = match.group(1).lower(), match.group(2)
        doomed: list[str] = []
        if kind == "publish with reply of" or subject.startswith("_INBOX."):
            doomed = list(self._requests)
        elif kind == "publish to":
            doomed = [subject]
        for name in doomed:
            for scope in self._requests.get(name, ()):
                self._denied[name] = f"{match.group(1)} {subject!r}"
                scope.cancel()
        return True

    async def close(self) -> None:
        """Flush what is pending and close (bounded in time)."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(5, shield=True):
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await self._nc.flush(timeout=2)
        with anyio.move_on_after(5, shield=True):
            with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
                await self._nc.close()
        self._events_send.close()
        self._events.close()

    # -- core NATS ------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
    ) -> None:
        """Publish without waiting (buffered while reconnecting)."""
        with translate(f"publish to {subject}"):
            await self._nc.publish(subject, payload, reply=reply, headers=headers)

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> NatsMsg:
        """Send a request and wait for its reply.

        Raises:
            PermissionDenied: the server refused the request (or its reply inbox).
            TransportError: no reply in time, no responder, or the connection failed.
        """
        scope = anyio.CancelScope()
        waiting = self._requests.setdefault(subject, set())
        waiting.add(scope)
        try:
            with scope, translate(f"request to {subject}"):
                msg = await self._nc.request(
                    subject, payload, timeout=timeout or self.timeout, headers=headers
                )
        finally:
            waiting.discard(scope)
            if not waiting:
                self._requests.pop(subject, None)
        if scope.cancel_called:
            denied = self._denied.pop(subject, f"publish to {subject!r}")
            raise PermissionDenied(
                f"permission denied: the NATS server refused {denied} "
                f"(request to {subject}); the connection's user lacks that permission"
            )
        return _detach(msg)

    async def subscribe(self, subject: str, *, queue: str = "", buffer: int = 1024) -> Subscription:
        """Subscribe; messages go into a memory stream of ``buffer`` messages (the callback
        waits when it is full, which pushes back into nats-py's own pending limits)."""
        send, receive = anyio.create_memory_object_stream[NatsMsg](buffer)

        async def forward(msg: Any) -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await send.send(_detach(msg))

        with translate(f"subscribe to {subject}"):
            sub = await self._nc.subscribe(subject, queue=queue, cb=forward)
        return Subscription(sub, receive, send)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the server has processed everything sent so far."""
        with translate("flush"):
            await self._nc.flush(timeout=timeout or self.timeout)

    def new_inbox(self) -> str:
        """A fresh unique inbox subject."""
        return str(self._nc.new_inbox())

    # -- multi-reply requests (one shared inbox, dispatched by token) ----------------------

    async def _ensure_reply_sub(self) -> None:
        if self._reply_sub is not None:
            return

        async def dispatch(msg: Any) -> None:
            token = msg.subject[len(self._reply_prefix) :]
            send = self._replies.get(token)
            if send is not None:
                with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                    send.send_nowait(_detach(msg))

        with translate("subscribe to the reply inbox"):
            self._reply_sub = await self._nc.subscribe(self._reply_prefix + "*", cb=dispatch)

    @contextlib.asynccontextmanager
    async def open_replies(
        self, buffer: int
    ) -> AsyncIterator[tuple[str, MemoryObjectReceiveStream[NatsMsg]]]:
        """A reply subject and the stream of every message sent to it, while in the block."""
        await self._ensure_reply_sub()
        token = secrets.token_hex(8)
        send, receive = anyio.create_memory_object_stream[NatsMsg](buffer)
        self._replies[token] = send
        try:
            yield self._reply_prefix + token, receive
        finally:
            self._replies.pop(token, None)
            send.close()
            receive.close()

    # -- JetStream ------------------------------------------------------------------------

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
            TransportError: no stream answered, or the connection failed.
        """
        try:
            reply = await self.request(subject, payload, headers=headers, timeout=timeout)
        except TransportError as exc:
            if isinstance(exc.__cause__, nats.errors.NoRespondersError):
                raise TransportError(f"no stream stores {subject}") from exc
            raise
        try:
            ack = _pub_decoder.decode(reply.data)
        except DECODE_ERRORS as exc:
            raise TransportError(f"bad publish acknowledgement: {reply.data[:200]!r}") from exc
        if ack.error is not None:
            raise _api_error(ack.error)
        return PubAck(ack.stream, ack.seq, ack.duplicate)

    async def js_api(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        """Call ``$JS.API.<path>`` with a JSON body; return the decoded reply.

        Raises:
            JetStreamApiError: the API answered with an error.
        """
        payload = b"" if body is None else _encoder.encode(body)
        reply = await self.request(f"$JS.API.{path}", payload, timeout=timeout)
        try:
            error = _err_decoder.decode(reply.data).error
            decoded = _any_decoder.decode(reply.data)
        except DECODE_ERRORS as exc:
            raise TransportError(f"bad JetStream API reply: {reply.data[:200]!r}") from exc
        if error is not None:
            raise _api_error(error)
        return decoded

    async def ensure_stream(self, config: dict[str, Any]) -> dict[str, Any]:
        """Create the stream, or update it to ``config`` when it exists."""
        name = config["name"]
        try:
            info: dict[str, Any] = await self.js_api(f"STREAM.CREATE.{name}", config)
            return info
        except JetStreamApiError as exc:
            if exc.err_code != 10058:  # stream name already in use (with another config)
                raise
        info = await self.js_api(f"STREAM.UPDATE.{name}", config)
        return info

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
            if exc.err_code != 10148:  # consumer already exists
                raise
        info = await self.js_api(f"CONSUMER.CREATE.{stream}.{name}", {**body, "action": "update"})
        return info

    async def direct_get(self, stream: str, subject: str) -> StoredMsg | None:
        """The last message on ``subject`` (a direct get), or ``None``."""
        reply = await self.request(f"$JS.API.DIRECT.GET.{stream}.{subject}")
        return _stored(reply)

    async def leader_get(
        self, stream: str, subject: str | None = None, *, seq: int | None = None
    ) -> StoredMsg | None:
        """The last message on ``subject`` (or the message ``seq``), read by the stream's
        leader, or ``None``.

        Slower than :meth:`direct_get`, which any replica of a replicated stream may
        answer from a state that lags behind the last acknowledged write: this one sees
        every acknowledged write (headers are not returned)."""
        query: dict[str, Any] = {"seq": seq} if seq is not None else {"last_by_subj": subject}
        try:
            reply = await self.js_api(f"STREAM.MSG.GET.{stream}", query)
        except JetStreamApiError as exc:
            if exc.err_code == 10037:  # no message found
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

    async def get_next(
        self, stream: str, subject: str, seq: int, *, leader: bool = False
    ) -> StoredMsg | None:
        """The first message at or after sequence ``seq`` on ``subject`` (a filter: wildcards
        allowed), or ``None``. With ``leader`` the stream's leader answers (it has every
        acknowledged write); otherwise any replica may, by a direct get."""
        query = {"seq": max(1, seq), "next_by_subj": subject}
        if not leader:
            reply = await self.request(f"$JS.API.DIRECT.GET.{stream}", _encoder.encode(query))
            return _stored(reply)
        return await self._leader_query(stream, query)

    async def get_last(
        self, stream: str, subject: str, *, leader: bool = False
    ) -> StoredMsg | None:
        """The last message on ``subject`` (a filter: wildcards allowed), or ``None``; with
        ``leader``, as read by the stream's leader."""
        query = {"last_by_subj": subject}
        if not leader:
            reply = await self.request(f"$JS.API.DIRECT.GET.{stream}", _encoder.encode(query))
            return _stored(reply)
        return await self._leader_query(stream, query)

    async def _leader_query(self, stream: str, query: dict[str, Any]) -> StoredMsg | None:
        try:
            reply = await self.js_api(f"STREAM.MSG.GET.{stream}", query)
        except JetStreamApiError as exc:
            if exc.err_code == 10037:  # no message found
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

    async def direct_get_last_many(
        self, stream: str, subjects: list[str], *, timeout: float | None = None
    ) -> list[StoredMsg] | None:
        """The last message of every subject matching ``subjects`` (filters allowed), in
        stream order; ``None`` when more than the server's limit (1024) match."""
        if not subjects:
            return []
        out: list[StoredMsg] = []
        async with self.open_replies(buffer=100_000) as (inbox, replies):
            body = _encoder.encode({"multi_last": subjects, "batch": 100_000})
            await self.publish(f"$JS.API.DIRECT.GET.{stream}", body, reply=inbox)
            with anyio.fail_after(timeout or max(self.timeout, 10.0)):
                async for msg in replies:
                    status = msg.status
                    if status is None:
                        stored = _stored(msg)
                        if stored is not None:
                            out.append(stored)
                        continue
                    if status == "204" or status == "404":
                        return out
                    if status == "413":
                        return None
                    raise TransportError(f"direct get: status {status} {msg.headers}")
        return out  # pragma: no cover - the stream only closes on exit

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

    async def delete_msg(self, stream: str, seq: int) -> bool:
        """Delete one message; ``False`` if it was already gone."""
        try:
            await self.js_api(f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True})
        except JetStreamApiError as exc:
            if exc.err_code in (10037, 10057) or exc.code == 400 or exc.code == 404:
                return False
            raise
        return True

    async def purge_subject_nowait(self, stream: str, subject: str) -> None:
        """Ask for every message on ``subject`` to be purged, without waiting."""
        await self.publish(
            f"$JS.API.STREAM.PURGE.{stream}",
            _encoder.encode({"filter": subject}),
            reply=self._void,
        )


def _api_error(err: _ApiErr) -> JetStreamApiError:
    cls = WrongLastSequence if err.err_code in _WRONG_LAST_SEQUENCE else JetStreamApiError
    return cls(err.code, err.err_code, err.description)


def _stored(msg: NatsMsg) -> StoredMsg | None:
    status = msg.status
    if status is not None and not msg.data:
        if status == "404":
            return None
        raise TransportError(f"direct get: status {status} {msg.headers}")
    headers = msg.headers or {}
    try:
        return StoredMsg(
            subject=headers["Nats-Subject"],
            seq=int(headers["Nats-Sequence"]),
            data=msg.data,
            time=headers.get("Nats-Time-Stamp", ""),
            headers=headers,
        )
    except (KeyError, ValueError) as exc:
        raise TransportError(f"direct get: unexpected reply headers {headers}") from exc


async def open_connection(
    url: str,
    *,
    auth: NatsAuth | None = None,
    name: str = "stemd",
    timeout: float = 5.0,
    connect_timeout: float = 2.0,
    connect_attempts: int = 3,
    reconnect_wait: float = 0.25,
    pending_size: int = 8 * 1024 * 1024,
) -> NatsConnection:
    """Connect to ``url`` (query string ignored) with the credentials and TLS of ``auth``.

    The first connection is tried ``connect_attempts`` times; after that the client
    reconnects forever, buffering up to ``pending_size`` bytes of publishes meanwhile.
    TLS is required when ``auth`` sets any ``tls_*`` option or the URL is ``tls://``: a
    server that does not require TLS is refused rather than spoken to in clear.

    Raises:
        TransportError: the server could not be reached, refused the credentials, or the
            TLS handshake failed (the message says which; secrets are never in it).
        ConfigError: a file of ``auth`` is unreadable or malformed.
    """
    auth = auth or NatsAuth()
    server, _ = split_url(url)
    shown = redact_url(server)
    options = auth.connect_options()
    wants_tls = auth.wants_tls or server.lstrip().startswith("tls://")
    conn: NatsConnection | None = None
    trouble: list[BaseException] = []  # errors met while connecting the first time
    connecting = anyio.CancelScope()

    async def error_cb(exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if conn is None:
            trouble.append(exc)
            if _hopeless(exc):
                # Refused credentials or an untrusted certificate: another attempt would
                # meet the same answer (and nats-py may wait long before giving up).
                connecting.cancel()
        elif conn._permission_violation(str(exc)):
            log.warning("nats permission denied", url=shown, error=text)
            return
        log.warning("nats connection trouble", url=shown, error=text)

    async def disconnected_cb() -> None:
        if conn is not None and conn._closed:
            return
        log.info("nats disconnected", url=shown)
        if conn is not None:
            conn._event("disconnected")

    async def reconnected_cb() -> None:
        log.info("nats reconnected", url=shown)
        if conn is not None:
            conn.reconnects += 1
            conn._event("reconnected")

    async def closed_cb() -> None:
        if conn is not None:
            conn._event("closed")

    nc: Any = _Client()
    try:
        with anyio.fail_after(connect_timeout * connect_attempts + 5), connecting:
            await nc.connect(
                servers=[server],
                name=name,
                error_cb=error_cb,
                disconnected_cb=disconnected_cb,
                reconnected_cb=reconnected_cb,
                closed_cb=closed_cb,
                connect_timeout=connect_timeout,
                max_reconnect_attempts=connect_attempts,
                reconnect_time_wait=reconnect_wait,
                pending_size=pending_size,
                ping_interval=10,
                max_outstanding_pings=3,
                **options,
            )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        await _abandon(nc)
        cause: BaseException = exc
        if trouble and isinstance(exc, (nats.errors.NoServersError, TimeoutError)):
            # "No servers available" or our deadline hides why; the server's refusal is
            # followed by the connection's reset, which says less.
            cause = next((e for e in reversed(trouble) if _hopeless(e)), trouble[-1])
        raise TransportError(
            f"cannot connect to NATS at {shown}: {_why(cause, auth, server, wants_tls)}"
        ) from exc
    if connecting.cancelled_caught:
        await _abandon(nc)
        raise TransportError(
            f"cannot connect to NATS at {shown}: {_why(trouble[-1], auth, server, wants_tls)}"
        )
    if wants_tls and not _uses_tls(nc):
        await _abandon(nc)
        raise TransportError(
            f"cannot connect to NATS at {shown}: TLS is configured but the server does not "
            "require it (refusing to talk in clear; configure TLS on the server)"
        )
    # Connected: from now on never give up reconnecting.
    nc.options["max_reconnect_attempts"] = -1
    conn = NatsConnection(nc, server, timeout)
    return conn


async def _abandon(nc: Any) -> None:
    """Close a client that did not (properly) connect, bounded in time, and its socket:
    a connection attempt cut short may have left it open behind nats-py's back."""
    with anyio.move_on_after(5, shield=True):
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await nc.close()
    transport = getattr(nc, "_transport", None)
    if transport is not None:
        writer = getattr(transport, "_io_writer", None)
        with contextlib.suppress(Exception):
            if writer is not None:
                writer.transport.abort()  # no TLS close_notify to wait for
            transport.close()
        # After a failed TLS upgrade the stream never hears of the close: do not wait long.
        with anyio.move_on_after(0.2, shield=True), contextlib.suppress(Exception):
            await transport.wait_closed()


def _hopeless(exc: BaseException) -> bool:
    """Whether a connection attempt failed in a way no retry changes."""
    text = str(exc).lower()
    return (
        isinstance(exc, (nats.errors.AuthorizationError, ssl.SSLCertVerificationError))
        or "authorization violation" in text
        or "certificate required" in text
    )


def _uses_tls(nc: Any) -> bool:
    """Whether the connection went through a TLS handshake (nats-py upgrades when the
    server requires TLS, or first thing with ``tls_handshake_first``)."""
    info = getattr(nc, "_server_info", None) or {}
    return bool(info.get("tls_required") or nc.options.get("tls_handshake_first"))


def _why(exc: BaseException, auth: NatsAuth, server: str, wants_tls: bool) -> str:
    """Why a connection failed, in words an operator can act on."""
    text = str(exc)
    if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in (
        text.lower()
    ):
        method = auth.method()
        if method == "no credentials" and url_has_credentials(server):
            method = "the credentials in the URL"
        if method == "no credentials":
            return "authorization violation: the server requires credentials and none were given"
        return f"authorization violation: the server refused {method}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or text
        return (
            f"TLS: the server's certificate is not trusted ({detail}); "
            "check tls_ca_file and the server's name (tls_hostname)"
        )
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or text).replace("_", " ").lower()
        if "certificate required" in reason:
            return (
                f"TLS: the server requires a client certificate ({reason}); "
                "set tls_cert_file and tls_key_file"
            )
        return f"TLS handshake failed: {reason}"
    if "authentication expired" in text.lower() or "revoked" in text.lower():
        return f"the server refused {auth.method()}: {text.removeprefix('nats: ')}"
    closed = isinstance(exc, ConnectionError) or "unexpected eof" in text.lower()
    if closed and wants_tls and auth.tls_cert_file is None:
        # TLS 1.3: the server checks the client's certificate after the handshake and
        # hangs up; the client may see its write fail before it reads the alert.
        return (
            f"{type(exc).__name__}: {text}: the server closed the TLS connection; it may "
            "require a client certificate (set tls_cert_file and tls_key_file)"
        )
    no_info = isinstance(exc, TimeoutError) or "expecting INFO" in text
    if no_info and wants_tls and not auth.tls_handshake_first:
        return (
            "no answer in time (a server that expects the TLS handshake first needs "
            "tls_handshake_first)"
        )
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
