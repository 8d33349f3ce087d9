"""The NATS connection is one translation boundary: whatever goes wrong under it (no reply
in time, a stalled or stopped server, a closed connection), only stemd's errors come out,
so that the retry loops above it, which catch :class:`TransportError`, see every failure.

A batched direct get that timed out once let a bare ``TimeoutError`` through the store's
retry loop and into ``App.emit`` (seen in tests/chaos/test_nats_kills.py)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from stemd._errors import StemError, TransportError
from stemd._natsconn import NatsConnection, open_connection
from stemd._store.jetstream import JetStreamStore

if TYPE_CHECKING:
    from stemd.testing._nats import NatsServer

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _state(pid: int) -> str:
    """The process's state letter in /proc (``T``: stopped)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rpartition(")")[2].split()[0]


@contextmanager
def stalled(server: NatsServer) -> Iterator[None]:
    """The server process stopped (SIGSTOP) for the block: connected, and silent."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        # The signal takes effect asynchronously: the server must not answer one more.
        deadline = time.monotonic() + 5
        while _state(pid) not in ("T", "t") and time.monotonic() < deadline:
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.fixture
async def kv_stream(conn: NatsConnection) -> AsyncIterator[str]:
    """A stream with direct gets allowed, holding one message on ``kv.a``."""
    await conn.ensure_stream({"name": "KVT", "subjects": ["kv.>"], "allow_direct": True})
    await conn.js_publish("kv.a", b"1")
    return "KVT"


async def test_a_batched_direct_get_nobody_answers_is_a_transport_error(
    conn: NatsConnection,
) -> None:
    """A batched direct get whose request is taken but never answered fails with
    TransportError when its time is up (it used to raise a bare TimeoutError)."""
    silent = await conn.subscribe("$JS.API.DIRECT.GET.SILENT")
    try:
        with pytest.raises(TransportError):
            await conn.direct_get_last_many("SILENT", ["kv.>"], timeout=0.2)
    finally:
        await silent.unsubscribe()


async def test_requests_in_flight_each_time_out_at_their_own_time(
    conn: NatsConnection,
) -> None:
    """Requests nobody answers, with different timeouts, in flight at once: each fails
    with TransportError no sooner than its own timeout, the short ones while the long one
    still waits (one timer of the connection looks at them all)."""
    silent = await conn.subscribe("silent.home")
    ended: dict[float, float] = {}
    start = anyio.current_time()

    async def ask(timeout: float) -> None:
        with pytest.raises(TransportError):
            await conn.request("silent.home", b"", timeout=timeout)
        ended[timeout] = anyio.current_time() - start

    try:
        async with anyio.create_task_group() as tg:
            for timeout in (1.0, 0.1, 0.3):
                tg.start_soon(ask, timeout)
    finally:
        await silent.unsubscribe()
    assert sorted(ended, key=ended.__getitem__) == [0.1, 0.3, 1.0]
    assert all(ended[timeout] >= timeout for timeout in ended)


Call = Callable[[NatsConnection], Awaitable[Any]]

ENTRY_POINTS: dict[str, Call] = {
    "request": lambda c: c.request("nobody.home", b"", timeout=0.3),
    "flush": lambda c: c.flush(timeout=0.3),
    "js_publish": lambda c: c.js_publish("kv.b", b"", timeout=0.3),
    "js_api": lambda c: c.js_api("STREAM.INFO.KVT", timeout=0.3),
    "direct_get": lambda c: c.direct_get("KVT", "kv.a"),
    "direct_get_last_many": lambda c: c.direct_get_last_many("KVT", ["kv.>"], timeout=0.3),
    "leader_get": lambda c: c.leader_get("KVT", "kv.a"),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
async def test_every_request_to_a_stalled_server_fails_as_a_transport_error(
    nats: NatsServer, kv_stream: str, name: str
) -> None:
    """A request of any kind to a server that stopped answering fails with TransportError."""
    conn = await open_connection(nats.url, name="stalled", timeout=0.3)
    try:
        with stalled(nats), pytest.raises(TransportError):
            await ENTRY_POINTS[name](conn)
    finally:
        await conn.close()


CLOSED: dict[str, Call] = {
    **ENTRY_POINTS,
    "publish": lambda c: c.publish("kv.c", b""),
    "subscribe": lambda c: c.subscribe("kv.>"),
    "ensure_stream": lambda c: c.ensure_stream({"name": "KVT", "subjects": ["kv.>"]}),
    "purge_subject_nowait": lambda c: c.purge_subject_nowait("KVT", "kv.a"),
    "delete_msg": lambda c: c.delete_msg("KVT", 1),
    "stream_subjects": lambda c: c.stream_subjects("KVT", "kv.>"),
}


@pytest.mark.parametrize("name", sorted(CLOSED))
async def test_every_call_on_a_closed_connection_fails_as_a_transport_error(
    nats: NatsServer, name: str
) -> None:
    """Any call on a connection already closed fails with TransportError, never more."""
    conn = await open_connection(nats.url, name="closed")
    await conn.close()
    with pytest.raises(TransportError):
        await CLOSED[name](conn)


async def test_a_store_listing_from_a_stalled_server_fails_as_a_store_error(
    nats: NatsServer,
) -> None:
    """A listing whose batched direct get is never answered fails with a StemError (the
    store's retry loop sees it) and the store works again once the server answers."""
    store = JetStreamStore.from_url(nats.url, timeout=0.5, retry_for=0)
    await store.open()
    try:
        with stalled(nats), pytest.raises(StemError):
            await store.runs_waiting_on("topic")
        assert await store.runs_waiting_on("topic") == []
    finally:
        await store.close()


async def test_requests_in_flight_each_get_their_own_reply(conn: NatsConnection) -> None:
    """Many requests in flight on the shared reply inbox each get the reply to their own
    request, answered in reverse order; a reply that comes after its request timed out is
    dropped, and the next request is answered."""
    server = await conn.subscribe("echo.>")
    answered: list[tuple[str, bytes]] = []
    try:
        async with anyio.create_task_group() as tg:
            results: dict[int, bytes] = {}

            async def ask(i: int) -> None:
                results[i] = (await conn.request(f"echo.{i}", str(i).encode(), timeout=5)).data

            for i in range(20):
                tg.start_soon(ask, i)
            for _ in range(20):
                msg = await server.receive()
                answered.append((msg.reply, msg.data))
            for reply, data in reversed(answered):
                await conn.publish(reply, b"re:" + data)
        assert results == {i: f"re:{i}".encode() for i in range(20)}

        with pytest.raises(TransportError):
            await conn.request("echo.late", b"late", timeout=0.2)
        late = await server.receive()
        await conn.publish(late.reply, b"too late")
        async with anyio.create_task_group() as tg:
            got: list[bytes] = []

            async def ask_again() -> None:
                got.append((await conn.request("echo.again", b"x", timeout=5)).data)

            tg.start_soon(ask_again)
            again = await server.receive()
            await conn.publish(again.reply, b"on time")
        assert got == [b"on time"]
    finally:
        await server.unsubscribe()


async def test_a_request_in_flight_when_the_connection_is_lost_fails_at_once(
    nats: NatsServer,
) -> None:
    """A request whose reply can no longer come (the server went away after taking it)
    fails with TransportError as soon as the connection is lost, not after its timeout;
    a request made after the server is back is answered."""
    conn = await open_connection(nats.url, name="lost", timeout=30)
    try:
        listener = await conn.subscribe("hang.>")
        async with anyio.create_task_group() as tg:
            failed = anyio.Event()

            async def ask() -> None:
                with pytest.raises(TransportError):
                    await conn.request("hang.1", b"?")
                failed.set()

            tg.start_soon(ask)
            await listener.receive()  # the server has the request: then it goes away
            nats.kill()
            with anyio.fail_after(5):  # the request's own timeout is 30 s
                await failed.wait()
        await listener.unsubscribe()
        await nats.start()
        answer = await conn.subscribe("echo.>")
        try:
            async with anyio.create_task_group() as tg:

                async def reply() -> None:
                    msg = await answer.receive()
                    await conn.publish(msg.reply, b"back")

                tg.start_soon(reply)
                with anyio.fail_after(10):
                    assert (await conn.request("echo.1", b"", timeout=10)).data == b"back"
        finally:
            await answer.unsubscribe()
    finally:
        await conn.close()
