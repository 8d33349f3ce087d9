"""Helpers for testing workflows: a manual clock and a real nats-server for tests."""

from __future__ import annotations

from stemd.testing.clock import ManualClock
from stemd.testing.nats import NatsServer, NatsServerError, nats_server

__all__ = ("ManualClock", "NatsServer", "NatsServerError", "nats_server")
