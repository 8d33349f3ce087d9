"""Workflow definitions: :class:`Flow` (declared steps) and :class:`Script` (code is the plan)."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from stemd._authoring.runtime import current_script
from stemd._authoring.steps import StepInfo, check_name, step_info
from stemd._authoring.steps import return_type as _return_type
from stemd._model import Retry

if TYPE_CHECKING:
    from stemd._authoring.context import FlowContext, ScriptContext

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
FlowStepFn = Callable[["FlowContext"], Awaitable[Any]]


class FlowStep:
    """One declared step of a :class:`Flow`."""

    __slots__ = ("fn", "index", "name", "retry")

    def __init__(
        self,
        name: str,
        index: int,
        fn: Callable[[FlowContext], Awaitable[Any]],
        retry: Retry | None,
    ) -> None:
        self.name = name
        self.index = index
        self.fn = fn
        self.retry = retry


class Flow:
    """A workflow whose plan is its declared steps, run in declaration order.

    Example::

        approvals = stemd.Flow("approvals.flow")

        @approvals.step("draft")
        async def draft(ctx: stemd.FlowContext) -> str: ...
    """

    kind = "flow"

    def __init__(self, name: str, *, queue: str | None = None) -> None:
        self.name = check_name("workflow", name)
        self.queue = queue
        self.steps: list[FlowStep] = []
        self._by_name: dict[str, FlowStep] = {}

    def step(
        self, name: str | None = None, *, retry: Retry | None = None
    ) -> Callable[[FlowStepFn], FlowStepFn]:
        """Declare the next step; ``name`` defaults to the function's name."""

        def register(
            fn: Callable[[FlowContext], Awaitable[Any]],
        ) -> Callable[[FlowContext], Awaitable[Any]]:
            if not inspect.iscoroutinefunction(fn):
                raise TypeError(f"flow step {fn!r} must be an async function")
            step_name = check_name("step", name or fn.__name__)
            if step_name in self._by_name:
                raise ValueError(f"flow {self.name!r} already has a step {step_name!r}")
            entry = FlowStep(step_name, len(self.steps), fn, retry)
            self.steps.append(entry)
            self._by_name[step_name] = entry
            return fn

        return register

    def has_step(self, name: str) -> bool:
        """Whether the flow declares a step called ``name``."""
        return name in self._by_name

    def __repr__(self) -> str:
        return f"Flow({self.name!r}, steps={[s.name for s in self.steps]!r})"


class Script:
    """A workflow whose plan is its code: see :func:`script`."""

    kind = "script"

    def __init__(
        self, name: str, fn: Callable[..., Awaitable[Any]], *, queue: str | None = None
    ) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"script {fn!r} must be an async function")
        self.name = check_name("workflow", name)
        self.fn = fn
        self.queue = queue
        params = list(inspect.signature(fn).parameters.values())
        if not params:
            raise TypeError(f"script {name!r} must accept a ScriptContext as first parameter")
        self.takes_params = len(params) >= 2
        self.params_type: Any = Any
        self.return_type = _return_type(fn)
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


def script(
    name: str | None = None, *, queue: str | None = None
) -> Callable[[Callable[..., Awaitable[Any]]], Script]:
    """Declare a script workflow: ``@stemd.script("user.signup")``."""

    def register(fn: Callable[..., Awaitable[Any]]) -> Script:
        return Script(name or fn.__name__, fn, queue=queue)

    return register


@overload
def step(fn: F, /) -> F: ...


@overload
def step(*, name: str | None = None, retry: Retry | None = None) -> Callable[[F], F]: ...


def step(
    fn: F | None = None, /, *, name: str | None = None, retry: Retry | None = None
) -> F | Callable[[F], F]:
    """Make an async function a checkpoint when it is called inside a script run.

    Called while a script run executes, the call is recorded under ``name`` (the
    function's name by default) and returns its stored value on replay. Called
    anywhere else, it is a plain coroutine function.
    """

    def decorate(func: F) -> F:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"step {func!r} must be an async function")
        info = StepInfo(func, check_name("step", name or func.__name__), retry)

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
