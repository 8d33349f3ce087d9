"""Names and step functions: what the engine needs to know about a step, computed once."""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any

from stemd._model import seconds

if typing.TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from stemd._model import Retry

__all__ = ["StepInfo", "check_name", "check_version", "return_type", "step_info", "step_timeout"]

_RESERVED = ("@", "#")


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a valid workflow or step name, else raise ValueError."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string")
    if any(ch in name for ch in _RESERVED):
        raise ValueError(f"{kind} name {name!r} must not contain '@' or '#'")
    return name


def check_version(version: object) -> str | int | None:
    """Return ``version`` if it is a valid workflow version (a non-empty string or an
    integer, or ``None``), else raise ValueError."""
    if version is None or (isinstance(version, int) and not isinstance(version, bool)):
        return version
    if isinstance(version, str) and 0 < len(version) <= 100:
        return version
    raise ValueError(f"workflow version must be an integer or a short string, not {version!r}")


def return_type(fn: Callable[..., Any]) -> Any:
    """The annotated return type of ``fn``; ``Any`` when it has none that resolves."""
    try:
        return typing.get_type_hints(fn).get("return", Any)
    except Exception:  # forward references that do not resolve: keep plain values
        return Any


class StepInfo:
    """What the engine needs to know about a step function (computed once)."""

    __slots__ = ("fn", "name", "retry", "return_type", "timeout", "wants_context")

    def __init__(
        self,
        fn: Callable[..., Awaitable[Any]],
        name: str,
        retry: Retry | None,
        timeout: float | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.retry = retry
        self.timeout = timeout
        self.return_type = return_type(fn)
        if self.return_type is type(None):
            self.return_type = Any
        param = inspect.signature(fn).parameters.get("context")
        self.wants_context = param is not None and param.kind is inspect.Parameter.KEYWORD_ONLY


@functools.lru_cache(maxsize=4096)
def step_info(
    fn: Callable[..., Awaitable[Any]], name: str, retry: Retry | None, timeout: float | None = None
) -> StepInfo:
    """The cached :class:`StepInfo` of ``fn`` used under ``name``."""
    return StepInfo(fn, name, retry, timeout)


def step_timeout(value: object) -> float | None:
    """A step's ``timeout=`` (seconds or a timedelta) as seconds; ``None`` for none.

    Raises:
        ValueError: not a positive duration.
    """
    if value is None:
        return None
    secs = seconds(value, "step timeout")  # type: ignore[arg-type]
    if secs is None or secs <= 0:
        raise ValueError(f"step timeout must be a positive number of seconds, not {value!r}")
    return secs
