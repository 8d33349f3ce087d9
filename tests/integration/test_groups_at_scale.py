"""Pausing a big group with no daemon up, then letting daemons come: 10,000 runs waiting
on a topic are paused straight on the store, an event is emitted to the topic, two daemons
start and move none of them; resumed, every run takes the event and completes exactly
once. On a SQLite file and on a JetStream KV bucket."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._model import RunStatus
from stemd.observability import Observer, RunChanged

if TYPE_CHECKING:
    from pathlib import Path

    from stemd.testing._nats import NatsServer

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(900)]

RUNS = 10_000
TOPIC = "scale.go"
TOOK: Counter[str] = Counter()


async def _took(run_id: str, payload: Any) -> Any:
    TOOK[run_id] += 1
    return payload


@stemd.script("scale.waiter")
async def waiter(ctx: stemd.ScriptContext) -> Any:
    """Waits for an event on scale.go; a step then records that this run took it."""
    payload = await ctx.wait_for_event(TOPIC)
    return await ctx.step("took", _took, ctx.run_id, payload)


@stemd.script("scale.canary")
async def canary(ctx: stemd.ScriptContext) -> str:
    """Completes at once: proof that a daemon is taking runs."""
    return "sung"


class _Reached(Observer):
    """Set once every waiter has been seen reaching ``status`` (on any App it watches):
    an event to await instead of listing 10,000 runs from the store over and over."""

    def __init__(self, status: RunStatus) -> None:
        self.status = status
        self.runs: set[str] = set()
        self.all = anyio.Event()

    def watch(self, app: stemd.App) -> None:
        app.engine.observers.subscribe(self)

    def run_changed(self, event: RunChanged) -> None:
        if event.workflow == "scale.waiter" and event.status is self.status:
            self.runs.add(event.run_id)
            if len(self.runs) == RUNS:
                self.all.set()


def _options(url: str, kind: str, **more: Any) -> dict[str, Any]:
    return {
        "store": url,
        "broker": url if kind == "jetstream" else None,
        "workflows": [waiter, canary],
        "concurrency": 64,
        "options": stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.2)),
        **more,
    }


async def _count(app: stemd.App, status: RunStatus, *, paused: bool | None = None) -> int:
    count = 0
    after = None
    while True:
        page = await app.page_runs(workflow="scale.waiter", status=status, limit=5000, after=after)
        count += sum(1 for r in page.runs if paused is None or r.paused is paused)
        if page.next is None:
            return count
        after = page.next


@pytest.mark.parametrize("kind", ["sqlite", "jetstream"])
async def test_ten_thousand_paused_waiters_hold_an_event_until_resumed(
    kind: str, nats: NatsServer, tmp_path: Path
) -> None:
    """10,000 waiting runs paused with no daemon up keep an event emitted to their topic
    through the start of two daemons (none moves), and complete exactly once with its
    payload once resumed."""
    TOOK.clear()
    url = f"sqlite:///{tmp_path / 'scale.db'}" if kind == "sqlite" else nats.url
    ids = [f"scale-{i}" for i in range(RUNS)]
    # The runs get to their wait, then every daemon goes away.
    waiting = _Reached(RunStatus.SUSPENDED)
    async with stemd.App(**_options(url, kind)) as app:
        waiting.watch(app)

        async def start(part: list[str]) -> None:
            for run_id in part:
                await app.start_workflow(waiter, run_id=run_id)

        async with anyio.create_task_group() as tg:
            for i in range(0, RUNS, 250):
                tg.start_soon(start, ids[i : i + 250])

        with anyio.fail_after(600):
            await waiting.all.wait()
        assert await _count(app, RunStatus.SUSPENDED) == RUNS

    # No daemon: straight on the store.
    async with stemd.App(store=url, workers=False) as client:
        assert await client.pause_runs(topic=TOPIC) == RUNS
        assert await client.emit(TOPIC, {"go": 1}) == 0

        completed = _Reached(RunStatus.COMPLETED)
        async with stemd.App(**_options(url, kind)) as one, stemd.App(**_options(url, kind)) as two:
            completed.watch(one)
            completed.watch(two)
            sung = await one.start_workflow(canary)
            assert (await client.wait_for_completion(sung, timeout=60)).value == "sung"
            assert await _count(client, RunStatus.SUSPENDED, paused=True) == RUNS
            assert not TOOK

            assert await client.resume_runs(topic=TOPIC) == RUNS
            with anyio.fail_after(600):
                await completed.all.wait()
            assert await _count(client, RunStatus.COMPLETED) == RUNS
            page = await client.page_runs(workflow="scale.waiter", limit=RUNS)
            assert {r.result == {"go": 1} for r in page.runs} == {True}
    assert len(TOOK) == RUNS
    assert set(TOOK.values()) == {1}
