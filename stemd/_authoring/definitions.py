"""Workflow definitions: :class:`Flow` (declared steps) and :class:`Script` (code is the plan).

Both are generic in the type of their params (``P``) and of their result (``R``), and are
their own typed handles (:class:`~stemd._authoring.handles.Handle`): ``flow.start(app, p)``.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, overload

from typing_extensions import TypeVar

from stemd._authoring.handles import Handle
from stemd._authoring.runtime import current_script
from stemd._authoring.steps import StepInfo, check_name, check_version, step_info, step_timeout
from stemd._authoring.steps import return_type as _return_type

if TYPE_CHECKING:
    from datetime import timedelta

    from stemd._authoring.context import FlowContext, ScriptContext
    from stemd._authoring.limits import Limits
    from stemd._model import Retry

__all__ = [
    "Flow",
    "FlowStep",
    "Script",
    "StepInfo",
    "check_name",
    "script",
    "step",
    "step_info",
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
P = TypeVar("P", default=Any)
R = TypeVar("R", default=Any)


class FlowStep:
    """One declared step of a :class:`Flow`."""

    __slots__ = ("compensate", "fn", "index", "name", "retry", "timeout")

    def __init__(
        self,
        name: str,
        index: int,
        fn: Callable[[FlowContext[Any]], Awaitable[Any]],
        retry: Retry | None,
        timeout: float | None = None,
        compensate: Callable[[FlowContext[Any]], Awaitable[Any]] | None = None,
    ) -> None:
        self.name = name
        self.index = index
        self.fn = fn
        self.retry = retry
        self.timeout = timeout
        self.compensate = compensate


class Flow(Handle[P, R]):
    """A workflow whose plan is its declared steps, run in declaration order.

    Example::

        approvals = stemd.Flow("approvals.flow")

        @approvals.step("draft")
        async def draft(ctx: stemd.FlowContext) -> str: ...

    Args:
        name: the workflow's name.
        queue: the queue its runs go to (default: the App's).
        limits: how many of its runs execute at once, across every daemon
            (:class:`~stemd.Limits`; the config's ``[limits]`` override it).
        params: the type of its params (a ``msgspec.Struct``, a dataclass, any type
            msgspec decodes): steps get ``ctx.params`` decoded into it, and a start with
            params that do not fit it is refused with :class:`~stemd.PayloadError`.
        result: the type of its result (the last step's value), into which
            :meth:`start_and_wait` decodes it.
        version: the version of its code (a string or an integer). A run records the
            version it started with and is executed by that version while an App
            registers it; new runs take the newest (see docs/howto/changing-workflows.md).
    """

    kind = "flow"

    @overload
    def __init__(
        self: Flow[Any, Any],
        name: str,
        *,
        queue: str | None = None,
        limits: Limits | None = None,
        params: None = None,
        result: None = None,
        version: str | int | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: Flow[P, Any],
        name: str,
        *,
        queue: str | None = None,
        limits: Limits | None = None,
        params: type[P],
        result: None = None,
        version: str | int | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self: Flow[Any, R],
        name: str,
        *,
        queue: str | None = None,
        limits: Limits | None = None,
        params: None = None,
        result: type[R],
        version: str | int | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self,
        name: str,
        *,
        queue: str | None = None,
        limits: Limits | None = None,
        params: type[P],
        result: type[R],
        version: str | int | None = None,
    ) -> None: ...

    def __init__(
        self,
        name: str,
        *,
        queue: str | None = None,
        limits: Limits | None = None,
        params: Any = None,
        result: Any = None,
        version: str | int | None = None,
    ) -> None:
        self.name = check_name("workflow", name)
        self.version = check_version(version)
        self.queue = queue
        self.limits = limits
        self.params_type = Any if params is None else params
        self.result_type = Any if result is None else result
        self.steps: list[FlowStep] = []
        self._by_name: dict[str, FlowStep] = {}

    def step(
        self,
        name: str | None = None,
        *,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
        compensate: Callable[[FlowContext[P]], Awaitable[Any]] | None = None,
    ) -> Callable[
        [Callable[[FlowContext[P]], Awaitable[Any]]], Callable[[FlowContext[P]], Awaitable[Any]]
    ]:
        """Declare the next step; ``name`` defaults to the function's name.

        Args:
            name: the step's name.
            retry: how its failed attempts are retried (default: not at all).
            timeout: seconds (or a timedelta) an attempt may take: one that takes longer
                is cancelled and counts as a failed attempt (a ``TimeoutError``).
            compensate: an async function undoing the step: when a later step fails for
                good, the compensations of the completed steps run in reverse order, each
                once, and the run then fails with that step's error. It receives a
                FlowContext whose ``previous_result`` is this step's recorded value; it is
                retried as ``retry`` says and may not sleep or wait.
        """
        limit = step_timeout(timeout)
        if compensate is not None and not inspect.iscoroutinefunction(compensate):
            raise TypeError(f"compensation {compensate!r} must be an async function")

        def register(
            fn: Callable[[FlowContext[P]], Awaitable[Any]],
        ) -> Callable[[FlowContext[P]], Awaitable[Any]]:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"flow step {fn!r} must be an async function")
            step_name = check_name("step", name or fn.__name__)
            if step_name in self._by_name:
                raise ValueError(f"flow {self.name!r} already has a step {step_name!r}")
            entry = FlowStep(step_name, len(self.steps), fn, retry, limit, compensate)
            self.steps.append(entry)
            self._by_name[step_name] = entry
            return fn

        return register

    def compensates(self, index: int) -> bool:
        """Whether a step before the ``index``-th declares a compensation."""
        return any(st.compensate is not None for st in self.steps[:index])

    def has_step(self, name: str) -> bool:
        """Whether the flow declares a step called ``name``."""
        return name in self._by_name

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, steps={[s.name for s in self.steps]!r})"


class Script(Handle[P, R]):
    """A workflow whose plan is its code: see :func:`script`.

    Its params type is the annotation of the function's second parameter (``Any`` when
    it has none), its result type the return annotation.
    """

    kind = "script"

    def __init__(
        self,
        name: str,
        fn: Callable[..., Awaitable[Any]],
        *,
        queue: str | None = None,
        version: str | int | None = None,
        limits: Limits | None = None,
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"script {fn!r} must be an async function")
        self.name = check_name("workflow", name)
        self.version = check_version(version)
        self.fn = fn
        self.queue = queue
        self.limits = limits
        params = list(inspect.signature(fn).parameters.values())
        if not params:
            raise TypeError(f"script {name!r} must accept a ScriptContext as first parameter")
        self.takes_params = len(params) >= 2
        self.params_type = Any
        self.return_type = _return_type(fn)
        self.result_type = self.return_type
        if self.takes_params:
            try:
                hints = typing.get_type_hints(fn)
            except Exception:
                hints = {}
            self.params_type = hints.get(params[1].name, Any)
        functools.update_wrapper(self, fn)

    async def __call__(self, ctx: ScriptContext, *args: Any) -> Any:
        return await self.fn(ctx, *args)

    def __repr__(self) -> str:
        return f"Script({self.name!r})"


class _ScriptDecorator(Protocol):
    """What ``@stemd.script(...)`` returns: typed from the function it decorates."""

    @overload
    def __call__(self, fn: Callable[[ScriptContext], Awaitable[R]], /) -> Script[None, R]: ...

    @overload
    def __call__(self, fn: Callable[[ScriptContext, P], Awaitable[R]], /) -> Script[P, R]: ...

    @overload
    def __call__(self, fn: Callable[..., Awaitable[Any]], /) -> Script[Any, Any]: ...


def script(
    name: str | None = None,
    *,
    queue: str | None = None,
    version: str | int | None = None,
    limits: Limits | None = None,
) -> _ScriptDecorator:
    """Declare a script workflow: ``@stemd.script("user.signup")``; ``limits``: how many
    of its runs execute at once (:class:`~stemd.Limits`).

    The script object is typed from the function: ``Script[P, R]`` with ``P`` the
    annotation of its second parameter and ``R`` its return annotation. ``version`` is
    the version of its code, as for :class:`Flow`.
    """

    def register(fn: Callable[..., Awaitable[Any]]) -> Script[Any, Any]:
        return Script(name or fn.__name__, fn, queue=queue, version=version, limits=limits)

    return register


@overload
def step(fn: F, /) -> F: ...


@overload
def step(
    *,
    name: str | None = None,
    retry: Retry | None = None,
    timeout: float | timedelta | None = None,
) -> Callable[[F], F]: ...


def step(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    retry: Retry | None = None,
    timeout: float | timedelta | None = None,
) -> F | Callable[[F], F]:
    """Make an async function a checkpoint when it is called inside a script run.

    Called while a script run executes, the call is recorded under ``name`` (the
    function's name by default) and returns its stored value on replay; when it fails
    for good, :class:`~stemd.StepFailed` is raised at the call. An attempt longer than
    ``timeout`` seconds is cancelled and counts as a failed attempt. Called anywhere
    else, it is a plain coroutine function.
    """
    limit = step_timeout(timeout)

    def decorate(func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"step {func!r} must be an async function")
        info = StepInfo(func, check_name("step", name or func.__name__), retry, limit)

        @functools.wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            runtime = current_script()
            if runtime is None:
                return await func(*args, **kwargs)
            return await runtime.run_step(info, args, kwargs, None)

        wrapper.__stemd_step__ = info  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    if fn is not None:
        return decorate(fn)
    return decorate
