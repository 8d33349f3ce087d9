"""The one place where nats-py's exceptions (and anyio's, and the socket's) become stemd's.

Every entry point of the adapter — each public coroutine of
:class:`~stemd._natsconn.NatsConnection` and :class:`~stemd._natsconn.Subscription`, and
:func:`~stemd._natsconn.open_connection` — runs its whole body under :func:`boundary`, so
that nothing but a :class:`~stemd._errors.StemError` leaves it: not a ``TimeoutError`` of
nats-py or of an ``anyio.fail_after`` inside the method, not an ``OSError`` of the socket,
not ``nats.errors.ConnectionClosedError``, not an anyio stream closed under a reader.
Callers' retry loops catch :class:`~stemd._errors.TransportError` and see every failure.
(A bare ``TimeoutError`` once escaped a batched direct get this way, and the store's
retry loop, into ``App.emit``.)

Cancellation is never translated: it is a ``BaseException`` and passes through.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
import nats.errors

from stemd._errors import NoResponders, PermissionDenied, TransportError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterator

__all__ = [
    "FOREIGN",
    "JetStreamApiError",
    "NoResponders",
    "PermissionDenied",
    "WrongLastSequence",
    "api_error",
    "boundary",
    "is_entry_point",
    "suppressed",
    "translate",
    "translated",
]

P = ParamSpec("P")
T = TypeVar("T")

#: What may come out of nats-py and the machinery under it: nats-py's own errors (its
#: ``TimeoutError`` is also the built-in one), the socket's and the TLS layer's
#: ``OSError`` (``TimeoutError`` and ``ssl.SSLError`` among them), a stream read short
#: (``EOFError``), and anyio's errors of a memory stream closed under its reader. (And one
#: ``RuntimeError``: a write on a transport closed under nats-py, see
#: :func:`_closed_transport`.)
FOREIGN: tuple[type[Exception], ...] = (
    nats.errors.Error,
    OSError,
    EOFError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


def _closed_transport(exc: BaseException) -> bool:
    """Whether ``exc`` is the ``RuntimeError`` that asyncio's and uvloop's transports raise
    when written after the connection closed under them (nats-py writing while NATS is
    away): ``unable to perform operation on <TCPTransport closed=True ...>``."""
    return isinstance(exc, RuntimeError) and "unable to perform operation on" in str(exc)


class JetStreamApiError(TransportError):
    """Raised when the JetStream API answers with an error."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"JetStream error {code}/{err_code}: {description}")
        self.code = code
        self.err_code = err_code
        self.description = description


class WrongLastSequence(JetStreamApiError):
    """Raised when a conditional publish found another last sequence (a CAS conflict)."""


# The functions made entry points by boundary().
_ENTRY_POINTS: set[Callable[..., Any]] = set()

# JetStream's error codes of a conditional publish that found another last sequence.
_WRONG_LAST_SEQUENCE = (10071, 10164)


def api_error(code: int, err_code: int, description: str) -> JetStreamApiError:
    """The error for a JetStream API reply carrying an error."""
    cls = WrongLastSequence if err_code in _WRONG_LAST_SEQUENCE else JetStreamApiError
    return cls(code, err_code, description)


def translated(exc: BaseException, what: str) -> TransportError:
    """The stemd error for ``exc``, raised while doing ``what``."""
    text = str(exc)
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    cls = NoResponders if isinstance(exc, nats.errors.NoRespondersError) else TransportError
    error = cls(f"{what}: {detail}")
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn the foreign exceptions raised inside the block into :class:`TransportError`."""
    try:
        yield
    except FOREIGN as exc:
        raise translated(exc, what) from exc
    except RuntimeError as exc:
        if not _closed_transport(exc):
            raise
        raise translated(exc, what) from exc


@contextlib.contextmanager
def suppressed() -> Iterator[None]:
    """Ignore the foreign exceptions raised inside the block (for cleanup that may meet a
    connection already gone)."""
    with contextlib.suppress(*FOREIGN):
        yield


def boundary(
    what: str,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Make a coroutine function an entry point of the adapter: every foreign exception
    raised in it comes out as :class:`TransportError` saying ``what`` failed.

    ``what`` may name the function's arguments, e.g. ``"request to {subject}"``; they are
    filled in only when something failed.
    """

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        signature = inspect.signature(fn)

        def describe(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            try:
                bound = signature.bind(*args, **kwargs)
                return what.format(**bound.arguments)
            except (TypeError, KeyError, IndexError, ValueError):
                return what

        @functools.wraps(fn)
        async def entry(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await fn(*args, **kwargs)
            except FOREIGN as exc:
                raise translated(exc, describe(args, kwargs)) from exc
            except RuntimeError as exc:
                if not _closed_transport(exc):
                    raise  # a bug, not NATS going away
                raise translated(exc, describe(args, kwargs)) from exc

        _ENTRY_POINTS.add(entry)
        return entry

    return decorate


def is_entry_point(fn: object) -> bool:
    """Whether ``fn`` was made an entry point by :func:`boundary`."""
    return fn in _ENTRY_POINTS
