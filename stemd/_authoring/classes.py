"""Class-based workflows: ``@stemd.workflow("name")`` on a class whose ``async def run``
is a script body and whose ``@stemd.step`` methods are its checkpoints.

Example::

    @stemd.workflow("orders.checkout")
    class Checkout:
        async def run(self, order: Order, *, context: stemd.ScriptContext | None = None) -> Receipt:
            charge_id = await self.charge(order)      # a checkpoint named "charge"
            ...

        @stemd.step
        async def charge(self, order: Order) -> str: ...

The design, following Stem's annotated workflows:

- ``run(self)`` or ``run(self, params)``: the second parameter receives the run's params,
  decoded into its annotation, as a script's does. A :class:`~stemd.ScriptContext` is
  injected only when ``run`` declares a keyword-only parameter ``context`` (give it a
  default of ``None`` and ``run`` stays callable by hand, in a unit test).
- A ``@stemd.step`` method called from ``run`` is a checkpoint named after the method (or
  the step's given name), exactly as a ``@stemd.step`` function called from a script; one
  that declares a keyword-only ``context`` receives a :class:`~stemd.StepContext`.
- One instance per execution: every execution slice of a run (its first, and each
  re-entry after a suspension or a retry) builds a fresh instance with ``cls()`` and calls
  ``run`` from its top. Attributes set by ``__init__`` are configuration; a value to keep
  across a suspension belongs in a checkpoint (a step's return value), never in ``self``.
- The decorator returns the class itself: it stays instantiable and testable, gains
  ``start`` and ``start_and_wait`` (its typed handle), and registers wherever a Flow or a
  script does (``App(workflows=[Checkout])``, ``app.start_workflow(Checkout)``, a
  daemon's modules). Type checkers do not see what a class decorator adds:
  :func:`handle` gives the same handle typed from ``run``'s signature.
"""

from __future__ import annotations

import inspect
import typing
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from stemd._authoring.definitions import Flow, Script
from stemd._authoring.steps import check_name

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stemd._authoring.context import ScriptContext

__all__ = ["ClassScript", "definition_of", "handle", "workflow", "workflow_name"]

C = TypeVar("C", bound=type)
P = TypeVar("P")
R = TypeVar("R")
P_contra = TypeVar("P_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)

_ATTR = "__stemd_workflow__"
_HANDLE_METHODS = ("start", "start_and_wait")


def _fail(cls: type, why: str) -> TypeError:
    return TypeError(f"@stemd.workflow class {cls.__qualname__}: {why}")


def _run_signature(cls: type) -> tuple[Callable[..., Any], str | None, bool]:
    """``cls.run``, the name of its params parameter (``None``: it takes none) and whether
    it declares the keyword-only ``context``; a TypeError for any other shape."""
    run = inspect.getattr_static(cls, "run", None)
    if not inspect.iscoroutinefunction(run):
        raise _fail(cls, "it needs an `async def run(self, ...)` method")
    params = list(inspect.signature(run).parameters.values())[1:]  # after self
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p.name for p in params if p.kind in kinds]
    keyword = {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    if "context" in positional:
        raise _fail(
            cls,
            "run's `context` must be keyword-only: `*, context: stemd.ScriptContext | None = None`",
        )
    if len(positional) > 1 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        raise _fail(cls, "run takes at most one parameter after self: the params")
    for p in keyword.values():
        if p.name != "context" and p.default is inspect.Parameter.empty:
            raise _fail(cls, f"run's keyword-only {p.name!r} is never given: add a default")
    return run, (positional[0] if positional else None), "context" in keyword


def _check_constructible(cls: type) -> None:
    try:
        inspect.signature(cls).bind()
    except TypeError:
        raise _fail(
            cls, "it is built with no arguments (an instance per execution): `cls()` fails"
        ) from None
    except ValueError:  # no signature to inspect (a builtin base): found out at run time
        pass


class ClassScript(Script[Any, Any]):
    """The script a ``@stemd.workflow`` class defines: each execution builds an instance
    and awaits its ``run``."""

    def __init__(
        self, name: str, cls: type, *, queue: str | None = None, version: str | int | None = None
    ) -> None:
        run, params_name, wants_context = _run_signature(cls)
        _check_constructible(cls)

        async def body(ctx: ScriptContext, *args: Any) -> Any:
            instance = cls()
            if wants_context:
                return await instance.run(*args, context=ctx)
            return await instance.run(*args)

        if params_name is not None:

            async def fn(ctx: ScriptContext, params: Any) -> Any:
                return await body(ctx, params)

        else:

            async def fn(ctx: ScriptContext) -> Any:  # type: ignore[misc]
                return await body(ctx)

        super().__init__(name, fn, queue=queue, version=version)
        self.cls = cls
        try:
            hints = typing.get_type_hints(run)
        except Exception:  # forward references that do not resolve: plain values
            hints = {}
        if params_name is not None:
            self.params_type = hints.get(params_name, Any)
        self.return_type = self.result_type = hints.get("return", Any)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__module__ = cls.__module__
        self.__doc__ = cls.__doc__

    def __repr__(self) -> str:
        return f"ClassScript({self.name!r}, {self.cls.__qualname__})"


def _decorate(cls: C, name: str | None, queue: str | None, version: str | int | None) -> C:
    if not isinstance(cls, type):
        raise TypeError(f"@stemd.workflow decorates a class, not {cls!r}")
    for method in _HANDLE_METHODS:
        own = inspect.getattr_static(cls, method, None)
        if own is not None and not isinstance(getattr(own, "__self__", None), ClassScript):
            raise _fail(
                cls,
                f"{method!r} is the name of its handle's method: rename that attribute "
                f"(a step keeps its name with @stemd.step(name={method!r}))",
            )
    wf_name = check_name("workflow", name or cls.__name__)
    definition = ClassScript(wf_name, cls, queue=queue, version=version)
    setattr(cls, _ATTR, definition)
    cls.start = definition.start  # type: ignore[attr-defined]
    cls.start_and_wait = definition.start_and_wait  # type: ignore[attr-defined]
    return cls


@overload
def workflow(cls: C, /) -> C: ...


@overload
def workflow(
    name: str | None = None, /, *, queue: str | None = None, version: str | int | None = None
) -> Callable[[C], C]: ...


def workflow(
    name: Any = None, /, *, queue: str | None = None, version: str | int | None = None
) -> Any:
    """Make a class a script workflow: ``@stemd.workflow("orders.checkout")``.

    The name defaults to the class's; ``version`` is the version of its code, as for a
    Flow. See the module documentation for the rules.

    Raises:
        TypeError: the class has no ``async def run``, ``run`` takes more than the params
            and a keyword-only ``context``, the class cannot be built with no arguments,
            or it defines ``start`` or ``start_and_wait`` itself.
    """
    if isinstance(name, type):
        return _decorate(name, None, queue, version)

    def decorate(cls: C) -> C:
        return _decorate(cls, name, queue, version)

    return decorate


def definition_of(obj: Any) -> Any:
    """The workflow definition ``obj`` stands for: the script of a ``@stemd.workflow``
    class, anything else as it is."""
    if isinstance(obj, type):
        found = obj.__dict__.get(_ATTR)
        if isinstance(found, ClassScript):
            return found
    return obj


class _Run0(Protocol[R_co]):
    def run(self) -> Awaitable[R_co]: ...


class _Run1(Protocol[P_contra, R_co]):
    def run(self, params: P_contra, /) -> Awaitable[R_co]: ...


def workflow_name(obj: Any) -> str:
    """The name of a workflow given as a name, a definition or a ``@workflow`` class
    (``repr`` of anything else), without looking it up anywhere."""
    wf = definition_of(obj)
    name = wf if isinstance(wf, str) else getattr(wf, "name", None)
    return name if isinstance(name, str) else repr(obj)


@overload
def handle(obj: Flow[P, R], /) -> Flow[P, R]: ...


@overload
def handle(obj: Script[P, R], /) -> Script[P, R]: ...


@overload
def handle(obj: type[_Run0[R]], /) -> Script[None, R]: ...


@overload
def handle(obj: type[_Run1[P, R]], /) -> Script[P, R]: ...


def handle(obj: Any, /) -> Any:
    """The typed handle of a workflow: a Flow or a script is its own; a
    ``@stemd.workflow`` class's is its script, typed from ``run``'s signature
    (``Script[P, R]``), for type checkers that do not see what the decorator adds.

    Raises:
        TypeError: ``obj`` is not a workflow.
    """
    found = definition_of(obj)
    if isinstance(found, (Flow, Script)):
        return found
    raise TypeError(f"not a workflow (a Flow, a script or a @stemd.workflow class): {obj!r}")
