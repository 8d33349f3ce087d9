"""Metrics of a running App: runs, steps, slices, queue, timer and actors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import stemd
from stemd._observe import install_metrics, refresh_metrics
from stemd.testing import ManualClock
from tests.helpers import open_app

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

flow = stemd.Flow("observe.flow")
calls = {"flaky": 0}


@flow.step("first")
async def first(ctx: stemd.FlowContext) -> int:
    """Returns 1."""
    return 1


@flow.step("flaky", retry=stemd.Retry(max_attempts=2, backoff=1.0, jitter=False))
async def flaky(ctx: stemd.FlowContext) -> int:
    """Fails its first attempt, then sleeps 5 s; returns 2."""
    calls["flaky"] += 1
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    await ctx.sleep(5)
    return 2


@stemd.script("observe.fails")
async def fails(ctx: stemd.ScriptContext) -> None:
    """Fails with a ValueError."""
    raise ValueError("boom")


async def test_metrics_count_runs_steps_slices_and_read_actor_statistics() -> None:
    """After a retried, sleeping flow and a failing script, the series reflect what ran."""
    clock = ManualClock()
    async with open_app(flow, fails, clock=clock) as app:
        registry = install_metrics(app)
        ok = await app.start_workflow(flow)
        bad = await app.start_workflow(fails)
        assert (await app.wait_for_completion(bad, timeout=5)).is_failed
        waited = await app.wait_for_completion(ok, timeout=0.3)
        assert waited.timed_out
        clock.advance(1.5)  # the retry backoff
        waited = await app.wait_for_completion(ok, timeout=0.3)
        assert waited.timed_out  # now asleep inside the step
        clock.advance(6)
        assert (await app.wait_for_completion(ok, timeout=5)).is_completed
        text = generate_latest(registry).decode()

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("stemd_runs_started_total", workflow="observe.flow") == 1
    assert value("stemd_runs_finished_total", workflow="observe.flow", status="completed") == 1
    assert value("stemd_runs_finished_total", workflow="observe.fails", status="failed") == 1
    step = "stemd_step_duration_seconds_count"
    assert value(step, workflow="observe.flow", step="flaky", result="error") == 1
    assert value(step, workflow="observe.flow", step="first", result="ok") == 1
    slices = "stemd_slice_duration_seconds_count"
    assert value(slices, workflow="observe.flow", outcome="retry") == 1
    assert value(slices, workflow="observe.flow", outcome="suspend") == 1
    assert value("stemd_worker_concurrency") == 32
    assert value("stemd_queue_depth", queue="workflow") == 0
    assert value("stemd_timer_fired") == 2
    assert value("stemd_actor_restarts", actor="timer") == 0
    assert value("stemd_up") == 1
    assert "_created" not in text  # no creation-time series next to the counters


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_paused_runs_and_workflows_are_counted(kind: str, tmp_path: Path) -> None:
    """stemd_runs_paused counts paused runs by workflow (0 again once resumed) and
    stemd_workflows_paused the workflows whose new runs start paused."""
    store = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'm.db'}"
    async with open_app(fails, store=store, workers=False) as app:
        registry = install_metrics(app, paused_interval=0)
        for _ in range(3):
            await app.start_workflow(fails)
        await app.pause_runs(workflow="observe.fails", new_runs=True)
        await refresh_metrics(registry)
        text = generate_latest(registry).decode()
        assert 'stemd_runs_paused{workflow="observe.fails"} 3.0' in text
        assert "stemd_workflows_paused 1.0" in text
        await app.resume_runs(workflow="observe.fails", new_runs=True)
        await refresh_metrics(registry)
        text = generate_latest(registry).decode()
        assert 'stemd_runs_paused{workflow="observe.fails"} 0.0' in text
        assert "stemd_workflows_paused 0.0" in text
