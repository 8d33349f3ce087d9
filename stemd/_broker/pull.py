"""A JetStream pull consumer shared by any number of concurrent receivers, with no
background task.

nats-py's ``fetch`` has traps (a timed-out fetch leaves an orphaned pull request that
swallows the next messages; it raises TimeoutError instead of returning nothing; it turns
CancelledError into TimeoutError). Here every pull request of a consumer uses one inbox
subscription for the consumer's whole life, so a message answering an old request is
never lost: it lands in the same inbox and is handed to the next receiver. Receivers take
turns reading the inbox; a request asks for as many messages as receivers are waiting
and not yet covered by requests in flight, and expires after ``expires`` seconds. A
watchdog forgets the requests in flight if nothing at all arrives for longer than that
(a server restart drops them without a word).

The server keeps at most ``max_waiting`` pull requests per consumer, over every daemon
sharing it. Receivers coming back one by one would each add a request for one message
(as many requests as workers); instead, while requests are in flight and the consumer
has nothing pending (a request would wait at the server), a new one is sent only once at
least half the waiting receivers are uncovered, which keeps a few requests per daemon.
With messages pending, requests are answered at once and never wait there: each
receiver asks as soon as it comes back. A request the server refuses (409: waiting
requests full, leadership change, ...; 503: no JetStream responder yet) is not sent
again for ``refused_pause`` seconds rather than at once, in a loop.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from stemd._errors import TransportError
from stemd._model import Retry

if TYPE_CHECKING:
    from stemd._natsconn import NatsConnection, NatsMsg, Subscription

__all__ = ["JsMsg", "PullConsumer", "PullStats"]

log = structlog.get_logger("stemd.broker.pull")


class PullStats(msgspec.Struct, frozen=True, kw_only=True):
    """Counters of a pull consumer."""

    received: int
    requests: int
    buffered: int
    in_flight_requested: int


class JsMsg:
    """A message delivered by a pull consumer; acknowledge it explicitly."""

    __slots__ = ("_conn", "data", "headers", "reply", "subject")

    def __init__(self, conn: NatsConnection, msg: NatsMsg) -> None:
        self._conn = conn
        self.subject = msg.subject
        self.data = msg.data
        self.headers = msg.headers
        self.reply = msg.reply

    def _ack_tokens(self) -> list[str]:
        tokens = self.reply.split(".")
        # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending> (v1), or
        # $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>... (v2, 12+ tokens).
        return tokens[2:] if len(tokens) == 9 else tokens[4:]

    @property
    def num_delivered(self) -> int:
        """How many times this message has been delivered (1 the first time)."""
        try:
            return int(self._ack_tokens()[2])
        except (IndexError, ValueError):
            return 1

    @property
    def stream_seq(self) -> int:
        """The message's sequence in its stream."""
        try:
            return int(self._ack_tokens()[3])
        except (IndexError, ValueError):
            return 0

    def retry_delay(self, first: float = 1.0, cap: float = 300.0) -> float:
        """Seconds to wait before the next delivery of a message that failed: ``first``,
        doubling with each delivery, at most ``cap``."""
        return Retry(backoff=first, max_backoff=cap, jitter=False).delay(self.num_delivered)

    def header(self, name: str) -> str | None:
        """One header's value, or ``None``."""
        return self.headers.get(name) if self.headers else None

    async def ack(self) -> None:
        """Done with it: the work queue deletes it."""
        await self._conn.publish(self.reply, b"+ACK")

    async def nak(self, delay: float | None = None) -> None:
        """Deliver it again, after ``delay`` seconds."""
        body = b"-NAK"
        if delay:
            body += b" " + msgspec.json.encode({"delay": int(delay * 1e9)})
        await self._conn.publish(self.reply, body)

    async def in_progress(self) -> None:
        """Still working: restart the ack timer."""
        await self._conn.publish(self.reply, b"+WPI")

    async def term(self) -> None:
        """Never deliver it again (the work queue deletes it)."""
        await self._conn.publish(self.reply, b"+TERM")


class _Waiter:
    """One receiver waiting in :meth:`PullConsumer.next`."""

    __slots__ = ("_event", "msg", "pokeable", "poked")

    def __init__(self, pokeable: bool) -> None:
        self.msg: NatsMsg | None = None
        self.pokeable = pokeable
        self.poked = False  # told to look elsewhere (see PullConsumer.poke)
        self._event = anyio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        if self.msg is None:
            self._event = anyio.Event()


class PullConsumer:
    """One durable pull consumer of ``stream``, created or updated by :meth:`ensure`.

    Args:
        conn: the connection.
        stream: the stream's name.
        config: the durable consumer's configuration (``durable_name`` required).
        expires: lifetime of one pull request, seconds.
        refused_pause: seconds without a new request after the server refused one.
    """

    def __init__(
        self,
        conn: NatsConnection,
        stream: str,
        config: dict[str, Any],
        *,
        expires: float = 5.0,
        refused_pause: float = 0.2,
    ) -> None:
        self.conn = conn
        self.stream = stream
        self.config = config
        self.name = str(config["durable_name"])
        self.expires = expires
        self.refused_pause = refused_pause
        self._paused_until = 0.0  # monotonic time before which no request is sent
        self._backlog = 0  # messages still pending at the consumer, as of the last one
        self._sub: Subscription | None = None
        self._buffer: deque[NatsMsg] = deque()
        self._waiters: deque[_Waiter] = deque()
        self._requested = 0  # messages asked for and neither delivered nor expired
        self._deadline = 0.0  # monotonic time by which every request in flight expires
        self._reading = False
        self._reader: _Waiter | None = None  # the waiter reading the inbox
        self._read_scope: anyio.CancelScope | None = None  # its wait for a message
        self._ensured = False
        self._received = 0
        self._requests = 0
        self._closed = False
        self._reconnects = conn.reconnects

    def statistics(self) -> PullStats:
        return PullStats(
            received=self._received,
            requests=self._requests,
            buffered=len(self._buffer),
            in_flight_requested=self._requested,
        )

    async def ensure(self) -> None:
        """Create the consumer, or update it to this configuration."""
        await self.conn.ensure_consumer(self.stream, self.config)
        self._ensured = True

    async def _request(self, batch: int) -> None:
        if self._sub is None:
            self._sub = await self.conn.subscribe(self.conn.new_inbox(), buffer=100_000)
        if not self._ensured:
            await self.ensure()
        body = msgspec.json.encode({"batch": batch, "expires": int(self.expires * 1e9)})
        await self.conn.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.name}",
            body,
            reply=self._sub.subject,
        )
        self._requests += 1
        self._requested += batch
        self._deadline = time.monotonic() + self.expires + 1.0

    def _handle(self, msg: NatsMsg) -> None:
        status = msg.status
        if status is None or _is_stored(msg):
            self._received += 1
            self._requested = max(0, self._requested - 1)
            self._backlog = _pending(msg.reply)
            self._dispatch(msg)
            return
        if status == "100":  # idle heartbeat
            return
        pending = msg.header("Nats-Pending-Messages")
        if pending is not None:
            with contextlib.suppress(ValueError):
                self._requested = max(0, self._requested - int(pending))
        if status in ("408", "404"):
            return
        description = msg.header("Description") or ""
        log.info("pull request ended", consumer=self.name, status=status, reason=description)
        if status in ("409", "503"):
            self._paused_until = time.monotonic() + self.refused_pause
        if "Consumer Deleted" in description or "consumer not found" in description.lower():
            self._ensured = False
        if pending is None:
            self._requested = 0

    def ready(self) -> bool:
        """Whether a message fetched already waits (:meth:`next` returns it at once)."""
        return bool(self._buffer)

    def poke(self) -> bool:
        """Wake one receiver waiting in ``next(pokeable=True)``, which then returns
        ``None`` (unless a message reached it first): there is work for it elsewhere.
        ``False`` when none waits."""
        for waiter in self._waiters:
            idle = waiter.msg is None and waiter is not self._reader
            if idle and waiter.pokeable and not waiter.poked:
                waiter.poked = True
                waiter.wake()
                return True
        reader, scope = self._reader, self._read_scope
        if reader is not None and reader.pokeable and not reader.poked and scope is not None:
            reader.poked = True
            scope.cancel()  # its own timeout's scope: it stops reading, nothing is lost
            return True
        return False

    async def next(self) -> JsMsg:
        """The next message (waits as long as it takes).

        Raises:
            TransportError: the consumer is closed.
        """
        msg = await self._next(False)
        assert msg is not None  # only a pokeable receiver is poked
        return msg

    async def next_or_poked(self) -> JsMsg | None:
        """As :meth:`next`, or ``None`` once woken by :meth:`poke`."""
        return await self._next(True)

    async def _next(self, pokeable: bool) -> JsMsg | None:
        if self._buffer:
            return JsMsg(self.conn, self._buffer.popleft())
        waiter = _Waiter(pokeable)
        self._waiters.append(waiter)
        try:
            while waiter.msg is None:
                if self._buffer:
                    waiter.msg = self._buffer.popleft()
                    break
                if waiter.poked:
                    return None
                if self._closed:
                    raise TransportError(f"consumer {self.name} is closed")
                await self._top_up()
                if self._reading:
                    # Woken with a message, or to take over reading the inbox.
                    await waiter.wait()
                else:
                    self._reader = waiter
                    try:
                        await self._read_inbox()
                    finally:
                        self._reader = None
            return JsMsg(self.conn, waiter.msg)
        except BaseException:
            if waiter.msg is not None:  # handed a message, but cancelled: keep it
                self._buffer.appendleft(waiter.msg)
                waiter.msg = None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if not self._reading and self._waiters:
                self._waiters[0].wake()  # someone must read the inbox

    async def _top_up(self) -> None:
        """Ask for as many messages as receivers wait and requests in flight do not cover."""
        if self._reconnects != self.conn.reconnects:
            # Requests in flight died with the old connection (or server), and a server
            # that lost its store lost the consumer too.
            self._reconnects = self.conn.reconnects
            self._requested = 0
            self._ensured = False
        now = time.monotonic()
        if self._requested and now > self._deadline:
            self._requested = 0  # every request should have answered by now: lost
        waiting = len(self._waiters)
        need = waiting - self._requested
        if need <= 0 or now < self._paused_until:
            return
        if self._requested and not self._backlog and need < max(1, waiting // 2):
            return  # the requests in flight serve these receivers too, one after another
        try:
            await self._request(need)
        except TransportError as exc:
            # NATS away or the consumer gone: wait, then make sure it exists.
            log.warning("consumer unavailable", consumer=self.name, error=str(exc))
            self._ensured = False
            await anyio.sleep(0.5)

    def _dispatch(self, msg: NatsMsg) -> None:
        """Hand a delivered message to the first receiver waiting, or buffer it."""
        for waiter in self._waiters:
            if waiter.msg is None:
                waiter.msg = msg
                waiter.wake()
                return
        self._buffer.append(msg)

    async def _read_inbox(self) -> None:
        assert self._sub is not None
        self._reading = True
        try:
            # Until the requests in flight expire; with none (refused), until the pause ends.
            until = self._deadline if self._requested else self._paused_until
            wait = max(0.05, until - time.monotonic())
            with anyio.move_on_after(wait) as self._read_scope:
                self._handle(await self._sub.receive())
                # Take whatever else is already there without waiting.
                while True:
                    try:
                        msg = self._sub.messages.receive_nowait()
                    except anyio.WouldBlock:
                        break
                    self._handle(msg)
        finally:
            self._reading = False
            self._read_scope = None

    async def close(self) -> None:
        """Stop: buffered messages are handed back (nak) for others to take."""
        self._closed = True
        sub, self._sub = self._sub, None
        if sub is None:
            return
        with anyio.move_on_after(2, shield=True):
            leftover = [*self._buffer, *_drain(sub)]
            await sub.unsubscribe()
            for msg in leftover:
                if _is_stored(msg):
                    with contextlib.suppress(TransportError):
                        await self.conn.publish(msg.reply, b"-NAK")
        self._buffer.clear()
        for waiter in self._waiters:
            waiter.wake()


def _is_stored(msg: NatsMsg) -> bool:
    """Whether ``msg`` is a message of the stream (it can be acknowledged), whatever its
    headers: a publisher may put a ``Status`` header on its own message, which must not
    make it look like the server's status reply to a pull request (it would be dropped,
    and redelivered forever)."""
    return msg.reply.startswith("$JS.ACK.")


def _pending(reply: str) -> int:
    """The messages still pending at the consumer after this one, from its ack subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``, or the
    v2 form with domain and account first); 0 if it cannot be read."""
    tokens = reply.split(".")
    tokens = tokens[2:] if len(tokens) == 9 else tokens[4:]
    try:
        return int(tokens[6])
    except (IndexError, ValueError):
        return 0


def _drain(sub: Subscription) -> list[NatsMsg]:
    out = []
    while True:
        try:
            out.append(sub.messages.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return out
