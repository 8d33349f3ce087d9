"""Helpers for testing workflows: a manual clock (and, with NATS, a server fixture)."""

from __future__ import annotations

from stemd.testing.clock import ManualClock

__all__ = ("ManualClock",)
