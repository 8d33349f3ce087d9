"""Hooks through which metrics and tracing watch the engine (no-ops unless installed)."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Observer"]


class Observer(Protocol):
    """Told about what the engine does; every method must be cheap and must not raise."""

    def run_started(self, workflow: str) -> None:
        """A run was created."""
        ...

    def step_finished(self, workflow: str, step: str, seconds: float, ok: bool) -> None:
        """One attempt of a step ended (``ok`` False: it raised)."""
        ...

    def slice_finished(self, workflow: str, outcome: str, seconds: float) -> None:
        """An execution slice committed ``outcome`` (complete, suspend, retry, fail,
        release)."""
        ...

    def lease_lost(self, workflow: str) -> None:
        """A slice was abandoned because its lease was lost."""
        ...
