"""Flow control declared on a workflow: how many of its runs execute at once and how many
start per period, across every daemon sharing the store (see
docs/howto/operating-many-runs.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["Limits"]


def _seconds(value: object, most: float) -> bool:
    """Whether ``value`` is a number of seconds in (0, ``most``]."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value <= most


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Concurrency limits of a workflow, global across the daemons sharing one store.

    A run holds a slot while it executes (from the claim of a slice to its commit: a run
    that sleeps or waits for an event holds none). A run that finds no slot free waits,
    suspended, with an error of code ``"waiting_for_slot"`` saying which limit holds it,
    and tries again shortly; slots held by a daemon that died are freed when its lease
    expires.

    A rate limit counts starts: at most ``rate`` runs of the workflow (``key_rate`` of one
    key) start in any window of ``per`` seconds (a sliding window). A run over the rate
    waits, suspended, with an error of code ``"rate_limited"``, and tries again when the
    window may allow it; once started it is never counted again (its later slices, after a
    sleep or a wait, are not starts).

    Args:
        concurrency: runs of the workflow executing at once (``None``: no limit).
        key: the key of a run, computed from its params (e.g. ``lambda p: p["customer"]``).
        key_concurrency: runs of one key executing at once (needs ``key``).
        rate: runs of the workflow started per ``per`` seconds (``None``: no limit).
        key_rate: runs of one key started per ``per`` seconds (needs ``key``).
        per: the window of ``rate`` and ``key_rate``, in seconds.
        dedup_window: seconds a start with a ``dedup_key`` finds a live run started with
            the same key (and returns it instead of starting another); ``None``: one hour.
    """

    concurrency: int | None = None
    key: Callable[[Any], Any] | None = None
    key_concurrency: int | None = None
    rate: int | None = None
    key_rate: int | None = None
    per: float = 1.0
    dedup_window: float | None = None

    def __post_init__(self) -> None:
        if not _seconds(self.per, 86_400):
            raise ValueError(f"per must be a number of seconds in (0, 86400], not {self.per!r}")
        window = self.dedup_window
        if window is not None and not _seconds(window, float("inf")):
            raise ValueError(f"dedup_window must be a positive number of seconds, not {window!r}")
        for name in ("concurrency", "key_concurrency", "rate", "key_rate"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if self.key is not None and not callable(self.key):
            raise TypeError("key must be a function of a run's params")
        for name in ("key_concurrency", "key_rate"):
            if getattr(self, name) is not None and self.key is None:
                raise ValueError(f"{name} needs a key (a function of a run's params)")

    @property
    def limited(self) -> bool:
        """Whether any limit is set."""
        return any(
            n is not None
            for n in (self.concurrency, self.key_concurrency, self.rate, self.key_rate)
        )
