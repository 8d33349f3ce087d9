"""Core NATS over nats-py: publish, request, subscribe, flush, a shared reply inbox, and
the connection's life (state events, the server's permission refusals, closing).

Every public coroutine here is an entry point of the adapter, wrapped in
:func:`~stemd._natsconn.boundary.boundary`: only stemd's errors come out. nats-py's
callbacks never do work: they forward messages and events into bounded anyio memory
streams that stemd's own tasks read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import secrets
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors

from stemd._natsauth import redact_url
from stemd._natsconn.boundary import PermissionDenied, boundary, suppressed
from stemd._natsconn.messages import ConnectionEvent, NatsMsg, detach, plain_headers

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["CoreConnection", "Subscription"]

# The server's words: -ERR 'Permissions Violation for Publish to "stem.api.cancel"'.
_VIOLATION = re.compile(
    r'Permissions Violation for (Publish to|Subscription to|Publish with Reply of) "([^"]*)"', re.I
)


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

    @boundary("receive on {self.subject}")
    async def receive(self) -> NatsMsg:
        """The next message.

        Raises:
            TransportError: the subscription was ended meanwhile.
        """
        return await self._receive.receive()

    async def unsubscribe(self) -> None:
        """Stop receiving; messages already buffered stay readable."""
        with suppressed():
            await self._sub.unsubscribe()
        self._send.close()
        self._receive.close()


# The status of the reply the server sends when nobody listens on a request's subject.
_NO_RESPONDERS = "503"


# How late a request's timeout may fire: the requests in flight are looked at this often
# by one timer of the connection, not each by a timer of its own (a timer made and
# cancelled per request cost the daemon a few percent).
_EXPIRY_TICK = 0.05


class CoreConnection:
    """A connected NATS client with stemd's conventions (core NATS; see
    :class:`~stemd._natsconn.NatsConnection` for JetStream).

    Args:
        nc: the connected nats-py client (made by :func:`~stemd._natsconn.open_connection`).
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
        # Requests in flight by token on the shared reply inbox: their subject, the
        # future their reply (or the server's refusal, reported out of band as an error
        # on the connection, or their timeout) settles, and the loop time of their
        # timeout (see _expire_due).
        self._requests: dict[str, tuple[str, asyncio.Future[NatsMsg], float]] = {}
        self._expiry: asyncio.TimerHandle | None = None
        self._tokens = itertools.count()
        self._reply_lock = anyio.Lock()

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
        every = kind == "publish with reply of" or subject.startswith("_INBOX.")
        if not every and kind != "publish to":
            return True
        for name, future, _ in list(self._requests.values()):
            if (every or name == subject) and not future.done():
                future.set_exception(
                    PermissionDenied(
                        f"permission denied: the NATS server refused {match.group(1)} "
                        f"{subject!r} (request to {name}); the connection's user lacks "
                        "that permission"
                    )
                )
        return True

    def _connection_lost(self) -> None:
        """The connection was lost: the replies of the requests in flight can no longer
        come (the server answers on the connection a request came on), so they fail now,
        as NATS being away, rather than at their timeout. Whether such a request was
        carried out is unknown, as after a timeout; requests sent while reconnecting go
        out once reconnected."""
        for _, future, _ in list(self._requests.values()):
            if not future.done():
                future.set_exception(nats.errors.UnexpectedEOF())

    async def close(self) -> None:
        """Flush what is pending and close (bounded in time)."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(5, shield=True), suppressed():
            await self._nc.flush(timeout=2)
        with anyio.move_on_after(5, shield=True), suppressed():
            await self._nc.close()
        self._events_send.close()
        self._events.close()

    # -- core NATS ------------------------------------------------------------------------

    @boundary("publish to {subject}")
    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
    ) -> None:
        """Publish without waiting (buffered while reconnecting)."""
        await self._nc.publish(subject, payload, reply=reply, headers=headers)

    @boundary("request to {subject}")
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
            NoResponders: nobody listens on ``subject``.
            TransportError: no reply in time, or the connection failed.
        """
        return await self._request(subject, payload, headers, timeout)

    async def _request(
        self,
        subject: str,
        payload: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> NatsMsg:
        """:meth:`request` for the entry points of this adapter, which translate what it
        raises themselves (one coroutine less per request)."""
        # The reply comes to the connection's shared inbox (as nats-py's own requests do),
        # settling a future that the server's refusal of the request or its timeout may
        # settle first: no cancel scope, task or timeout context per request.
        if self._reply_sub is None:
            await self._ensure_reply_sub()
        token = f"r{next(self._tokens)}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[NatsMsg] = loop.create_future()
        self._requests[token] = (subject, future, loop.time() + (timeout or self.timeout))
        if self._expiry is None:
            self._expiry = loop.call_later(_EXPIRY_TICK, self._expire_due)
        try:
            await self._nc.publish(
                subject, payload, reply=self._reply_prefix + token, headers=headers
            )
            msg = await future
        finally:
            del self._requests[token]
        if msg.status == _NO_RESPONDERS:
            raise nats.errors.NoRespondersError
        return msg

    @boundary("subscribe to {subject}")
    async def subscribe(self, subject: str, *, queue: str = "", buffer: int = 1024) -> Subscription:
        """Subscribe; messages go into a memory stream of ``buffer`` messages (the callback
        waits when it is full, which pushes back into nats-py's own pending limits)."""
        send, receive = anyio.create_memory_object_stream[NatsMsg](buffer)

        async def forward(msg: Any) -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await send.send(detach(msg))

        try:
            sub = await self._nc.subscribe(subject, queue=queue, cb=forward)
        except BaseException:
            send.close()
            receive.close()
            raise
        return Subscription(sub, receive, send)

    @boundary("flush")
    async def flush(self, timeout: float | None = None) -> None:
        """Wait until the server has processed everything sent so far."""
        await self._nc.flush(timeout=timeout or self.timeout)

    def new_inbox(self) -> str:
        """A fresh unique inbox subject."""
        return str(self._nc.new_inbox())

    # -- multi-reply requests (one shared inbox, dispatched by token) ----------------------

    async def _ensure_reply_sub(self) -> None:
        if self._reply_sub is not None:
            return
        async with self._reply_lock:  # one subscription, however many ask at first
            if self._reply_sub is None:
                await self._subscribe_replies()

    def _expire_due(self) -> None:
        """Time out the requests whose timeout has come (no reply came in time); look
        again a tick later while any is in flight."""
        self._expiry = None
        if not self._requests:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        for _, future, expires in self._requests.values():
            if expires <= now and not future.done():
                future.set_exception(nats.errors.TimeoutError())
        self._expiry = loop.call_later(_EXPIRY_TICK, self._expire_due)

    async def _subscribe_replies(self) -> None:
        cut = len(self._reply_prefix)

        def take(subject: str, data: bytes, headers: dict[str, str] | None) -> None:
            token = subject[cut:]
            request = self._requests.get(token)
            if request is None and token not in self._replies:
                return
            msg = NatsMsg(subject=subject, data=data, headers=plain_headers(headers))
            if request is not None:
                if not request[1].done():
                    request[1].set_result(msg)
                return
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                self._replies[token].send_nowait(msg)

        async def dispatch(msg: Any) -> None:
            take(msg.subject, msg.data, msg.headers)

        sub = await self._nc.subscribe(self._reply_prefix + "*", cb=dispatch)
        # nats-py's client of open_connection hands replies over from its read loop.
        take_directly = getattr(self._nc, "take_directly", None)
        if take_directly is not None:
            take_directly(sub, take)
        self._reply_sub = sub

    @contextlib.asynccontextmanager
    async def _open_replies(
        self, buffer: int
    ) -> AsyncIterator[tuple[str, MemoryObjectReceiveStream[NatsMsg]]]:
        """A reply subject and the stream of every message sent to it, while in the block
        (for the adapter's own entry points, which translate what the block raises)."""
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
