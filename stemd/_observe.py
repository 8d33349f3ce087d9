"""The metrics of a running App: what the engine does, and what its actors hold.

``install_metrics(app)`` returns a ``prometheus_client`` registry fed by an observer
subscribed to the engine and by a collector that reads the actors' ``statistics()`` at
scrape time; ``prometheus_client.generate_latest(registry)`` renders it.
See docs/reference/metrics.md for every series.
"""

from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from stemd._actors.sessions import SessionActor
from stemd._broker.capabilities import QueueDepth
from stemd._engine.limits import LimitedStore
from stemd._engine.observer import (
    LostLease,
    Observer,
    RunChanged,
    RunStarted,
    SliceFinished,
    StepFinished,
)
from stemd._health import DEPENDENCIES
from stemd._model import RunStatus
from stemd._observe_waiting import WaitingForSlot
from stemd._store.base import base_step_name
from stemd._store.capabilities import PausedCounts

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping

    from prometheus_client import Metric

    from stemd._app import App

__all__ = ["MetricsObserver", "install_metrics", "refresh_metrics"]

_ENDED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
_STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120)


class MetricsObserver(Observer):
    """The engine observer that counts runs, slices, steps and lease losses."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.started = Counter(
            "stemd_runs_started", "Runs created, by workflow.", ["workflow"], registry=registry
        )
        self.ended = Counter(
            "stemd_runs_finished",
            "Runs that completed, failed or were cancelled, by workflow and status.",
            ["workflow", "status"],
            registry=registry,
        )
        self.steps = Histogram(
            "stemd_step_duration_seconds",
            "Duration of step attempts, by workflow, step and result (ok, error, suspended).",
            ["workflow", "step", "result"],
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.slices = Histogram(
            "stemd_slice_duration_seconds",
            "Duration of execution slices (claim to commit), by workflow and outcome.",
            ["workflow", "outcome"],
            buckets=_STEP_BUCKETS,
            registry=registry,
        )
        self.lease_losses = Counter(
            "stemd_lease_losses",
            "Slices abandoned because the lease was lost.",
            ["workflow"],
            registry=registry,
        )

    def run_started(self, event: RunStarted) -> None:
        self.started.labels(workflow=event.workflow).inc()

    def run_changed(self, event: RunChanged) -> None:
        if event.status in _ENDED:
            self.ended.labels(workflow=event.workflow, status=event.status.value).inc()

    def step_finished(self, event: StepFinished) -> None:
        # Occurrence suffixes (poll#3) would make one series per loop iteration.
        self.steps.labels(
            workflow=event.workflow, step=base_step_name(event.step), result=event.result
        ).observe(event.duration)

    def slice_finished(self, event: SliceFinished) -> None:
        self.slices.labels(workflow=event.workflow, outcome=event.outcome).observe(event.duration)

    def lease_lost(self, event: LostLease) -> None:
        self.lease_losses.labels(workflow=event.workflow).inc()


def _gauge(name: str, help: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help, value=value)


def _by_label(name: str, help: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    """A gauge with one sample per key of ``values`` (its ``label``), in key order."""
    family = GaugeMetricFamily(name, help, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


# What a registry's owner awaits before rendering it: counts that take a store read,
# which a (synchronous) collector cannot make.
_REFRESHERS: weakref.WeakKeyDictionary[CollectorRegistry, list[Callable[[], Awaitable[None]]]] = (
    weakref.WeakKeyDictionary()
)


async def refresh_metrics(registry: CollectorRegistry) -> None:
    """Bring the values of ``registry`` that are read from the store up to date (the
    paused runs, the runs waiting for a slot); await before ``generate_latest(registry)``."""
    for refresh in _REFRESHERS.get(registry, ()):
        await refresh()


class PausedRuns:
    """``stemd_runs_paused`` and ``stemd_workflows_paused``: counted in the store at most
    every ``interval`` seconds (a count may read every run), by :meth:`refresh`."""

    def __init__(self, app: App, interval: float = 30.0) -> None:
        self.app = app
        self.interval = interval
        self.runs: dict[str, int] = {}
        self.workflows = 0
        self._next = 0.0

    async def refresh(self) -> None:
        """Count again if the last count is older than ``interval``."""
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        store = self.app.engine.store
        self.workflows = len(await store.paused_workflows())
        if isinstance(store, PausedCounts):
            counts = await store.paused_counts()
            # A workflow seen once stays, at 0, so that its series does not vanish.
            self.runs = {**dict.fromkeys(self.runs, 0), **counts}

    def collect(self) -> Iterator[Metric]:
        """The two gauges, as last counted."""
        yield _by_label("stemd_runs_paused", "Paused runs, by workflow.", "workflow", self.runs)
        yield _gauge(
            "stemd_workflows_paused", "Workflows whose new runs start paused.", self.workflows
        )


class _AppCollector(Collector):
    """The gauges read from the App's actors at each scrape."""

    def __init__(self, app: App, paused: PausedRuns) -> None:
        self.app = app
        self.paused = paused

    def collect(self) -> Iterator[Metric]:
        app = self.app
        yield _gauge("stemd_up", "1 while the process runs.", 1)
        if app.pool is not None:
            stats = app.pool.statistics()
            yield _gauge("stemd_runs_in_flight", "Runs being executed by this process.", stats.busy)
            yield _gauge(
                "stemd_worker_concurrency", "Runs this process executes at once.", stats.concurrency
            )
            yield _gauge(
                "stemd_worker_slices", "Execution slices run by this process.", stats.slices
            )
        broker = app.engine.broker
        if isinstance(broker, QueueDepth):
            depth = GaugeMetricFamily(
                "stemd_queue_depth", "Run ids waiting for a worker.", labels=["queue"]
            )
            depth.add_metric([app.queue], broker.depth(app.queue))
            yield depth
        if app.timer is not None:
            t = app.timer.statistics()
            yield _gauge("stemd_timer_scheduled", "Wake-ups held by the timer.", t.scheduled)
            yield _gauge("stemd_timer_fired", "Timers fired by this process.", t.fired)
            yield _gauge("stemd_timer_lag_seconds", "Lateness of the last timer fired.", t.last_lag)
            yield _gauge("stemd_timer_max_lag_seconds", "Largest timer lateness seen.", t.max_lag)
        if app.sweeper is not None:
            yield _gauge(
                "stemd_sweeper_requeued",
                "Orphaned runs re-enqueued by the sweeper.",
                app.sweeper.statistics().requeued,
            )
        if app.supervisor is not None:
            restarts = GaugeMetricFamily(
                "stemd_actor_restarts", "Restarts of each actor.", labels=["actor"]
            )
            for name, count in app.supervisor.statistics().restarts.items():
                restarts.add_metric([name], count)
            yield restarts
            yield from self._sessions(app)
        yield from self._health(app)
        yield from self.paused.collect()
        yield from self._limits(app)

    def _limits(self, app: App) -> Iterator[Metric]:
        store = app.engine.store
        if not isinstance(store, LimitedStore):
            return
        yield _by_label(
            "stemd_runs_held_back",
            "Times a run was held back by a concurrency limit here, by workflow.",
            "workflow",
            store.held_back,
        )
        yield _by_label(
            "stemd_slots_taken",
            "Slots of concurrency limits taken here, by workflow.",
            "workflow",
            store.slots_taken,
        )
        yield _by_label(
            "stemd_runs_rate_limited",
            "Starts held back by a rate limit here, by workflow.",
            "workflow",
            store.rate_limited,
        )

    def _sessions(self, app: App) -> Iterator[Metric]:
        assert app.supervisor is not None
        for actor in app.supervisor.actors:
            if isinstance(actor, SessionActor):
                stats = actor.statistics()
                yield _gauge(
                    "stemd_sessions_taken_over",
                    "Runs taken from dead sessions here.",
                    stats.taken_over,
                )
                yield _gauge(
                    "stemd_clock_skew_max_seconds",
                    "Largest clock skew seen with a peer.",
                    stats.max_skew,
                )

    def _health(self, app: App) -> Iterator[Metric]:
        health = app.health.state()
        degraded = GaugeMetricFamily(
            "stemd_degraded",
            "1 while the dependency is away (stemd._health).",
            labels=["dependency"],
        )
        for dependency in DEPENDENCIES:
            degraded.add_metric([dependency], int(dependency in health.degraded))
        yield degraded
        yield _gauge("stemd_health_changes", "Changes between ready and degraded.", health.changes)


def install_metrics(
    app: App, registry: CollectorRegistry | None = None, *, paused_interval: float = 30.0
) -> CollectorRegistry:
    """Attach metrics to an open ``app``; return the registry to serve (a
    ``prometheus_client.CollectorRegistry``: a new one unless given). The paused runs are
    counted in the store at most every ``paused_interval`` seconds (and so are the runs
    waiting for a slot), when :func:`refresh_metrics` is awaited before a rendering
    (``/metrics`` does)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    app.engine.observers.subscribe(MetricsObserver(registry))
    paused = PausedRuns(app, paused_interval)
    registry.register(_AppCollector(app, paused))
    _REFRESHERS.setdefault(registry, []).append(paused.refresh)
    waiting = WaitingForSlot(app, paused_interval)
    registry.register(waiting)
    _REFRESHERS[registry].append(waiting.refresh)
    return registry
