"""Helpers for testing workflows: a manual clock and a real nats-server for tests."""

from __future__ import annotations

from stemd.testing._clock import ManualClock
from stemd.testing._nats import NatsServer, NatsServerError, nats_server

__all__ = ("ManualClock", "NatsServer", "NatsServerError", "nats_server")
