"""Watching an App from Python: engine hooks, the run log, metrics and tracing.

The daemon wires all of this from its configuration; a library App picks what it needs:

- :class:`Observer`: subclass it and override the hooks you need (each takes one frozen
  struct: :class:`RunStarted`, :class:`RunChanged`, :class:`SliceStarted`,
  :class:`SliceFinished`, :class:`StepStarted`, :class:`StepFinished`,
  :class:`LostLease`), then ``app.engine.observers.subscribe(observer)``.
- :class:`RunLog`: one log line per run started, ended or retried
  (``App(actors=[RunLog])``).
- :func:`install_metrics` and :class:`HttpEndpoint` (with :func:`listen`): Prometheus
  metrics of an open App (a ``prometheus_client`` registry) and the server (uvicorn, in
  the App's event loop) that serves an ASGI application such as the daemon's.
- :func:`install_tracing` and :func:`trace_headers`: OpenTelemetry spans (the ``otel``
  extra) and the headers that carry a caller's trace to a daemon.
"""

from __future__ import annotations

from stemd._actors.http import HttpEndpoint, listen
from stemd._engine.observer import (
    LostLease,
    Observer,
    RunChanged,
    RunStarted,
    SliceFinished,
    SliceStarted,
    StepFinished,
    StepStarted,
)
from stemd._observe import install_metrics
from stemd._runlog import RunLog
from stemd._tracing import install_tracing, trace_headers

__all__ = (
    "HttpEndpoint",
    "LostLease",
    "Observer",
    "RunChanged",
    "RunLog",
    "RunStarted",
    "SliceFinished",
    "SliceStarted",
    "StepFinished",
    "StepStarted",
    "install_metrics",
    "install_tracing",
    "listen",
    "trace_headers",
)
