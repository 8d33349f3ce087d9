"""The metrics of a running App: what the engine does, and what its actors hold.

``install_metrics(app)`` returns a :class:`~stemd._metrics.Registry` fed by an observer
subscribed to the engine and by collectors that read the actors' ``statistics()`` at scrape time.
See docs/reference/metrics.md for every series.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

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
from stemd._metrics import Registry
from stemd._model import RunStatus
from stemd._store.base import base_step_name
from stemd._store.capabilities import PausedCounts

if TYPE_CHECKING:
    from stemd._app import App

__all__ = ["MetricsObserver", "install_metrics"]

_ENDED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
_STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 120)


class MetricsObserver(Observer):
    """The engine observer that counts runs, slices, steps and lease losses."""

    def __init__(self, registry: Registry) -> None:
        self.started = registry.counter(
            "stemd_runs_started_total", "Runs created, by workflow.", ["workflow"]
        )
        self.ended = registry.counter(
            "stemd_runs_finished_total",
            "Runs that completed, failed or were cancelled, by workflow and status.",
            ["workflow", "status"],
        )
        self.steps = registry.histogram(
            "stemd_step_duration_seconds",
            "Duration of step attempts, by workflow, step and result (ok, error, suspended).",
            ["workflow", "step", "result"],
            buckets=_STEP_BUCKETS,
        )
        self.slices = registry.histogram(
            "stemd_slice_duration_seconds",
            "Duration of execution slices (claim to commit), by workflow and outcome.",
            ["workflow", "outcome"],
            buckets=_STEP_BUCKETS,
        )
        self.lease_losses = registry.counter(
            "stemd_lease_losses_total", "Slices abandoned because the lease was lost.", ["workflow"]
        )

    def run_started(self, event: RunStarted) -> None:
        self.started.inc(workflow=event.workflow)

    def run_changed(self, event: RunChanged) -> None:
        if event.status in _ENDED:
            self.ended.inc(workflow=event.workflow, status=event.status.value)

    def step_finished(self, event: StepFinished) -> None:
        # Occurrence suffixes (poll#3) would make one series per loop iteration.
        self.steps.observe(
            event.duration,
            workflow=event.workflow,
            step=base_step_name(event.step),
            result=event.result,
        )

    def slice_finished(self, event: SliceFinished) -> None:
        self.slices.observe(event.duration, workflow=event.workflow, outcome=event.outcome)

    def lease_lost(self, event: LostLease) -> None:
        self.lease_losses.inc(workflow=event.workflow)


class PausedRuns:
    """``stemd_runs_paused`` and ``stemd_workflows_paused``: counted in the store at most
    every ``interval`` seconds (a count may read every run)."""

    def __init__(self, registry: Registry, app: App, interval: float = 30.0) -> None:
        self.app = app
        self.interval = interval
        self.runs = registry.gauge("stemd_runs_paused", "Paused runs, by workflow.", ["workflow"])
        self.workflows = registry.gauge(
            "stemd_workflows_paused", "Workflows whose new runs start paused."
        )
        self._next = 0.0
        self._seen: set[str] = set()

    async def collect(self) -> None:
        """Count again if the last count is older than ``interval``."""
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.interval
        store = self.app.engine.store
        self.workflows.set(len(await store.paused_workflows()))
        if not isinstance(store, PausedCounts):
            return
        counts = await store.paused_counts()
        for workflow in self._seen | set(counts):
            self.runs.set(counts.get(workflow, 0), workflow=workflow)
        self._seen |= set(counts)


def install_metrics(
    app: App, registry: Registry | None = None, *, paused_interval: float = 30.0
) -> Registry:
    """Attach metrics to an open ``app``; return the registry to serve. The paused runs
    are counted in the store at most every ``paused_interval`` seconds."""
    registry = registry or Registry()
    engine = app.engine
    engine.observers.subscribe(MetricsObserver(registry))

    up = registry.gauge("stemd_up", "1 while the process runs.")
    in_flight = registry.gauge("stemd_runs_in_flight", "Runs being executed by this process.")
    concurrency = registry.gauge("stemd_worker_concurrency", "Runs this process executes at once.")
    slices = registry.gauge("stemd_worker_slices", "Execution slices run by this process.")
    depth = registry.gauge("stemd_queue_depth", "Run ids waiting for a worker.", ["queue"])
    scheduled = registry.gauge("stemd_timer_scheduled", "Wake-ups held by the timer.")
    fired = registry.gauge("stemd_timer_fired", "Timers fired by this process.")
    lag = registry.gauge("stemd_timer_lag_seconds", "Lateness of the last timer fired.")
    max_lag = registry.gauge("stemd_timer_max_lag_seconds", "Largest timer lateness seen.")
    swept = registry.gauge("stemd_sweeper_requeued", "Orphaned runs re-enqueued by the sweeper.")
    restarts = registry.gauge("stemd_actor_restarts", "Restarts of each actor.", ["actor"])
    paused = PausedRuns(registry, app, paused_interval)
    held_back = registry.gauge(
        "stemd_runs_held_back",
        "Times a run was held back by a concurrency limit here, by workflow.",
        ["workflow"],
    )
    slots_taken = registry.gauge(
        "stemd_slots_taken", "Slots of concurrency limits taken here, by workflow.", ["workflow"]
    )

    async def collect() -> None:
        up.set(1)
        if app.pool is not None:
            stats = app.pool.statistics()
            in_flight.set(stats.busy)
            concurrency.set(stats.concurrency)
            slices.set(stats.slices)
        if isinstance(engine.broker, QueueDepth):
            depth.set(engine.broker.depth(app.queue), queue=app.queue)
        if app.timer is not None:
            tstats = app.timer.statistics()
            scheduled.set(tstats.scheduled)
            fired.set(tstats.fired)
            lag.set(tstats.last_lag)
            max_lag.set(tstats.max_lag)
        if app.sweeper is not None:
            swept.set(app.sweeper.statistics().requeued)
        if app.supervisor is not None:
            for name, count in app.supervisor.statistics().restarts.items():
                restarts.set(count, actor=name)
        await paused.collect()
        store = engine.store
        if isinstance(store, LimitedStore):
            for workflow, count in store.held_back.items():
                held_back.set(count, workflow=workflow)
            for workflow, count in store.slots_taken.items():
                slots_taken.set(count, workflow=workflow)

    registry.collector(collect)
    return registry
