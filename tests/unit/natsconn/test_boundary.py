"""The translation boundary around nats-py, without a server: which errors come out of it,
and that every public coroutine of the adapter is one of its entry points."""

from __future__ import annotations

import inspect

import anyio
import nats.errors
import pytest

from stemd._errors import StemError, TransportError
from stemd._natsconn import NatsConnection, NoResponders, Subscription, open_connection
from stemd._natsconn.boundary import FOREIGN, boundary, is_entry_point, translate

pytestmark = pytest.mark.anyio

# Cleanup that suppresses what it meets instead of raising it.
_CLEANUP = {"close", "unsubscribe"}


@pytest.mark.parametrize("cls", [NatsConnection, Subscription], ids=lambda c: c.__name__)
def test_every_public_coroutine_of_the_adapter_is_an_entry_point(cls: type) -> None:
    """Each public coroutine of the connection and the subscription translates errors."""
    public = [
        name
        for name, fn in inspect.getmembers(cls, inspect.iscoroutinefunction)
        if not name.startswith("_") and name not in _CLEANUP
    ]
    assert public
    assert [name for name in public if not is_entry_point(getattr(cls, name))] == []
    assert is_entry_point(open_connection)


@pytest.mark.parametrize(
    "exc",
    [
        nats.errors.TimeoutError(),
        TimeoutError(),
        nats.errors.ConnectionClosedError(),
        ConnectionResetError("reset"),
        EOFError(),
        anyio.EndOfStream(),
        anyio.ClosedResourceError(),
        anyio.BrokenResourceError(),
    ],
    ids=lambda e: type(e).__qualname__,
)
async def test_foreign_errors_come_out_as_transport_errors(exc: Exception) -> None:
    """What nats-py, anyio or the socket raise inside an entry point is a TransportError
    naming what failed, with the original as its cause."""

    @boundary("request to {subject}")
    async def request(subject: str) -> None:
        raise exc

    with pytest.raises(TransportError, match=r"^request to stem\.x: ") as caught:
        await request("stem.x")
    assert caught.value.__cause__ is exc
    assert isinstance(exc, FOREIGN)


async def test_no_responders_is_its_own_transport_error() -> None:
    """A request that reached nobody is a NoResponders (a TransportError)."""
    with pytest.raises(NoResponders), translate("request"):
        raise nats.errors.NoRespondersError()


async def test_stemd_errors_and_cancellation_pass_through_unchanged() -> None:
    """A StemError raised inside an entry point comes out as it is, and cancellation is
    never translated."""
    mine = StemError("mine")

    @boundary("call")
    async def fails() -> None:
        raise mine

    with pytest.raises(StemError) as caught:
        await fails()
    assert caught.value is mine

    @boundary("call")
    async def sleeps() -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(0.01) as scope:
        await sleeps()
    assert scope.cancelled_caught


async def test_a_bug_is_not_translated() -> None:
    """An error that is no transport failure (a bug) is not disguised as one."""

    @boundary("call")
    async def buggy() -> None:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        await buggy()


async def test_a_write_on_a_transport_closed_under_nats_py_is_a_transport_error() -> None:
    """The RuntimeError of a write on a closed transport (NATS gone) is a TransportError;
    another RuntimeError (a bug) is not translated."""
    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True>")

    @boundary("publish to {subject}")
    async def publish(subject: str, exc: Exception) -> None:
        raise exc

    with pytest.raises(TransportError, match=r"^publish to stem\.x: ") as caught:
        await publish("stem.x", closed)
    assert caught.value.__cause__ is closed
    with pytest.raises(TransportError), translate("flush"):
        raise closed
    with pytest.raises(RuntimeError, match="other"):
        await publish("stem.x", RuntimeError("other"))
