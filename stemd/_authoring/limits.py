"""Flow control declared on a workflow: how many of its runs execute at once, across
every daemon sharing the store (see docs/howto/operating-many-runs.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["Limits"]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Concurrency limits of a workflow, global across the daemons sharing one store.

    A run holds a slot while it executes (from the claim of a slice to its commit: a run
    that sleeps or waits for an event holds none). A run that finds no slot free waits,
    suspended, with an error of code ``"waiting_for_slot"`` saying which limit holds it,
    and tries again shortly; slots held by a daemon that died are freed when its lease
    expires.

    Args:
        concurrency: runs of the workflow executing at once (``None``: no limit).
        key: the key of a run, computed from its params (e.g. ``lambda p: p["customer"]``).
        key_concurrency: runs of one key executing at once (needs ``key``).
    """

    concurrency: int | None = None
    key: Callable[[Any], Any] | None = None
    key_concurrency: int | None = None

    def __post_init__(self) -> None:
        for name in ("concurrency", "key_concurrency"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.key is not None and not callable(self.key):
            raise TypeError("key must be a function of a run's params")
        if self.key_concurrency is not None and self.key is None:
            raise ValueError("key_concurrency needs a key (a function of a run's params)")

    @property
    def limited(self) -> bool:
        """Whether any limit is set."""
        return self.concurrency is not None or self.key_concurrency is not None
