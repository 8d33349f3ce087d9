"""Core NATS over nats-py: publish, request, subscribe, flush, a shared reply inbox, and
the connection's life (state events, the server's permission refusals, closing).

Every public coroutine here is an entry point of the adapter, wrapped in
:func:`~stemd._natsconn.boundary.boundary`: only stemd's errors come out. nats-py's
callbacks never do work: they forward messages and events into bounded anyio memory
streams that stemd's own tasks read.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from typing import TYPE_CHECKING, Any

import anyio

from stemd._natsauth import redact_url
from stemd._natsconn.boundary import PermissionDenied, boundary, suppressed
from stemd._natsconn.messages import ConnectionEvent, NatsMsg, detach

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
        scope = anyio.CancelScope()
        waiting = self._requests.setdefault(subject, set())
        waiting.add(scope)
        try:
            with scope:
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
        return detach(msg)

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

        async def dispatch(msg: Any) -> None:
            token = msg.subject[len(self._reply_prefix) :]
            send = self._replies.get(token)
            if send is not None:
                with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                    send.send_nowait(detach(msg))

        self._reply_sub = await self._nc.subscribe(self._reply_prefix + "*", cb=dispatch)

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
