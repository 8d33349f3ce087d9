"""Typed handles: start a workflow and wait for its result, emit and wait for an event,
with the params, results and payloads typed end to end.

A :class:`~stemd.Flow` and a script object are their own handles (they derive from
:class:`Handle`): ``await signup.start(app, params)`` starts a run of them and
``await signup.start_and_wait(app, params)`` returns a :class:`~stemd.WorkflowResult`
whose ``value`` is decoded into the workflow's result type. An :class:`Event` carries a
topic and the type of its payloads.

Handles talk to an App through the small protocols below (:class:`Starter`,
:class:`Emitter`, :class:`Sender`, :class:`Waiter`): this layer imports nothing of the
App or the engine, and anything shaped like them (a test double, a client) will do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, Protocol, overload

import msgspec
from typing_extensions import TypeVar

from stemd._errors import PayloadError

if TYPE_CHECKING:
    import builtins
    from datetime import timedelta

    from stemd._model import CancellationPolicy, WorkflowResult

__all__ = ["Emitter", "Event", "Handle", "Sender", "Starter", "Waiter"]

P = TypeVar("P", default=Any)
R = TypeVar("R", default=Any)
T = TypeVar("T", default=Any)


class Starter(Protocol):
    """What a handle needs to start runs and wait for them: a :class:`~stemd.App`."""

    async def start_workflow(
        self,
        workflow: Any,
        params: Any = None,
        run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | timedelta | None = None,
    ) -> str:
        """Start a run; return its id."""
        ...

    async def wait_for_completion(
        self, run_id: str, timeout: float | timedelta | None = None, type: Any = None
    ) -> WorkflowResult[Any]:
        """Wait until the run ends (or ``timeout`` passes)."""
        ...


class Emitter(Protocol):
    """What :meth:`Event.emit` needs: an App's ``emit``."""

    async def emit(self, topic: str, payload: Any = None) -> int:
        """Deliver ``payload`` to the runs waiting on ``topic``; return how many."""
        ...


class Sender(Protocol):
    """What :meth:`Event.send` needs: an App's ``send``."""

    async def send(
        self, run_id: str, topic: str, payload: Any = None, key: str | None = None
    ) -> Any:
        """Deliver ``payload`` on ``topic`` to the run ``run_id`` only."""
        ...


class Waiter(Protocol):
    """What :meth:`Event.wait` needs: a flow or script context."""

    async def wait_for_event(
        self, topic: str, timeout: float | timedelta | None = None, type: Any = None
    ) -> Any:
        """Suspend until ``topic`` is emitted; return its payload."""
        ...


class Handle(Generic[P, R]):
    """Starting a workflow: the part that :class:`~stemd.Flow` and scripts share.

    ``P`` is the type of the params, ``R`` the type of the result; at run time
    :attr:`params_type` and :attr:`result_type` (``typing.Any`` when undeclared) say how
    params are checked and decoded and how results are read.
    """

    name: str
    params_type: Any
    result_type: Any

    @overload
    async def start(
        self: Handle[None, R],
        app: Starter,
        params: None = None,
        *,
        run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | timedelta | None = None,
        **options: Any,
    ) -> str: ...

    @overload
    async def start(
        self,
        app: Starter,
        params: P,
        *,
        run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | timedelta | None = None,
        **options: Any,
    ) -> str: ...

    async def start(
        self,
        app: Starter,
        params: Any = None,
        *,
        run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | timedelta | None = None,
        **options: Any,
    ) -> str:
        """Start a run of this workflow in ``app``; return its id.

        The options are those of :meth:`App.start_workflow <stemd.App.start_workflow>`:
        ``run_id`` (an existing one starts nothing and returns it), ``policy``, ``ttl``,
        ``queue``.

        Raises:
            PayloadError: ``params`` do not fit the workflow's params type (nothing is
                written).
            UnknownWorkflow: ``app`` does not know this workflow.
        """
        return await app.start_workflow(
            self, params, run_id=run_id, policy=policy, ttl=ttl, **options
        )

    @overload
    async def start_and_wait(
        self: Handle[None, R],
        app: Starter,
        params: None = None,
        timeout: float | timedelta | None = None,
        *,
        run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | timedelta | None = None,
        **options: Any,
    ) -> WorkflowResult[R]: ...

    @overload
    async def start_and_wait(
        self,
        app: Starter,
        params: P,
        timeout: float | timedelta | None = None,
        *,
        run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | timedelta | None = None,
        **options: Any,
    ) -> WorkflowResult[R]: ...

    async def start_and_wait(
        self,
        app: Starter,
        params: Any = None,
        timeout: float | timedelta | None = None,
        *,
        run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | timedelta | None = None,
        **options: Any,
    ) -> WorkflowResult[R]:
        """Start a run (as :meth:`start`) and wait until it ends or ``timeout`` passes.

        The result's ``value`` is decoded into the workflow's result type; a result that
        does not fit it raises :class:`~stemd.PayloadError`. When ``timeout`` passes
        first, the result has ``timed_out=True`` and the run goes on.
        """
        started = await app.start_workflow(
            self, params, run_id=run_id, policy=policy, ttl=ttl, **options
        )
        result_type = None if self.result_type is Any else self.result_type
        return await app.wait_for_completion(started, timeout=timeout, type=result_type)


def _check_value(value: Any, type: Any, what: str) -> None:
    """Raise :class:`PayloadError` if ``value`` does not convert into ``type``, as the
    waiting side will decode it. Types msgspec cannot check (a ``stemd.Versioned``) pass."""
    try:
        msgspec.convert(msgspec.to_builtins(value), type, strict=False)
    except msgspec.ValidationError as exc:
        raise PayloadError(f"{what}: {exc}") from None
    except TypeError:  # not a type msgspec knows, or a value it cannot encode: let the
        return  # codec and the waiting side decide, as for a plain emit


class Event(Generic[T]):
    """A topic and the type of its payloads, used on both sides of an event.

    Example::

        paid = stemd.Event("orders.paid", OrderPaid)

        # in a step or a script body
        payment = await paid.wait(ctx)            # an OrderPaid

        # anywhere with an App
        await paid.emit(app, OrderPaid(order_id="o-1", amount=42))

    Args:
        topic: the event topic (validated where it is used: emitting or waiting).
        type: what payloads are decoded into for the waiting run; ``None`` for plain
            values.
    """

    __slots__ = ("topic", "type")

    topic: str
    type: Any

    @overload
    def __init__(self: Event[Any], topic: str, type: None = None) -> None: ...

    @overload
    def __init__(self, topic: str, type: builtins.type[T]) -> None: ...

    def __init__(self, topic: str, type: Any = None) -> None:
        if not isinstance(topic, str) or not topic:
            raise ValueError("an event topic must be a non-empty string")
        self.topic = topic
        self.type = type

    def _check(self, value: Any) -> None:
        if self.type is not None:
            _check_value(value, self.type, f"payload of event {self.topic!r}")

    async def emit(self, app: Emitter, value: T) -> int:
        """Deliver ``value`` to every run waiting on the topic now (``app.emit``); return
        how many runs it resumed.

        Raises:
            PayloadError: ``value`` does not fit the event's type (nothing is delivered).
        """
        self._check(value)
        return await app.emit(self.topic, value)

    async def send(self, app: Sender, run_id: str, value: T, *, key: str | None = None) -> Any:
        """Deliver ``value`` on the topic to the run ``run_id`` only (``app.send``), with
        ``key`` to make the send idempotent; return what ``app.send`` returns.

        Raises:
            PayloadError: ``value`` does not fit the event's type (nothing is sent).
        """
        self._check(value)
        return await app.send(run_id, self.topic, value, key=key)

    async def wait(self, ctx: Waiter, timeout: float | timedelta | None = None) -> T:
        """Suspend the run until the topic is emitted; return the payload decoded into
        the event's type (``ctx.wait_for_event``).

        Raises:
            EventTimeout: on re-entry, when ``timeout`` passed before any emit.
        """
        value: T = await ctx.wait_for_event(self.topic, timeout=timeout, type=self.type)
        return value

    def __repr__(self) -> str:
        kind = "" if self.type is None else f", {getattr(self.type, '__name__', self.type)!s}"
        return f"Event({self.topic!r}{kind})"
