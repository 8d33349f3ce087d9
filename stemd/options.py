"""Options of a store or broker, given as a URL's query or as keywords."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from stemd.errors import ConfigError

__all__ = ["as_bool", "convert_options", "keep"]


def as_bool(value: Any) -> bool:
    """``True``, or a string such as ``1``, ``true``, ``yes``, ``on``."""
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes", "on")


def keep(value: Any) -> Any:
    """An option passed through as it is (an object given as a keyword)."""
    return value


def convert_options(
    options: Mapping[str, Any],
    kinds: Mapping[str, Callable[[Any], Any]],
    *,
    what: str,
    where: str = "",
) -> dict[str, Any]:
    """Each option converted by its kind (``int``, ``float``, ``str``, :func:`as_bool`...).

    Raises:
        ConfigError: an unknown option or a value its kind refuses, naming ``what`` (the
            config key) and ``where`` (e.g. the redacted URL).
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        kind = kinds.get(key)
        if kind is None:
            raise ConfigError(f"{what}: unknown option {key!r}{where}")
        try:
            out[key] = kind(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{what}: bad value for option {key!r}{where}: {exc}") from None
    return out
