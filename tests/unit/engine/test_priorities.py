"""Priorities in one App: with one slot, a run started with a higher priority runs before
runs that waited longer with a lower one; a priority out of range is refused and starts
nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd._engine.limits import WAITING_FOR_SLOT_CODE
from tests.helpers import open_app, wait_until

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

ORDER: list[str] = []
GATE: dict[str, anyio.Event] = {}


async def _note(label: str) -> str:
    ORDER.append(label)
    if label == "block":
        await GATE["open"].wait()
    return label


@stemd.script("prio.one", limits=stemd.Limits(concurrency=1))
async def one(ctx: stemd.ScriptContext, params: dict[str, Any]) -> str:
    """One step noting the run's label; "block" waits for the gate."""
    return await ctx.step("note", _note, params["label"])


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store the App uses."""
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/p.db"


async def test_higher_priorities_take_the_slot_first(store_url: str) -> None:
    """While "block" holds the only slot, l1 and l2 (priority 0) then h (priority 10)
    wait; once it ends, h runs first, then l1 and l2."""
    ORDER.clear()
    GATE["open"] = anyio.Event()
    options = stemd.AppOptions(timing=stemd.Timing(sweep_interval=0.05))
    async with open_app(one, store=store_url, options=options) as app:
        block = await app.start_workflow(one, {"label": "block"})

        async def blocking() -> bool:
            return ORDER == ["block"]

        await wait_until(blocking, what="block running")
        ids = [await app.start_workflow(one, {"label": label}) for label in ("l1", "l2")]
        ids.append(await app.start_workflow(one, {"label": "h"}, priority=10))

        async def all_waiting() -> bool:
            states = [await app.get_run(r) for r in ids]
            return all(
                s is not None and s.error is not None and s.error.code == WAITING_FOR_SLOT_CODE
                for s in states
            )

        await wait_until(all_waiting, timeout=10, what="three runs waiting for the slot")
        GATE["open"].set()
        for run_id in [block, *ids]:
            assert (await app.wait_for_completion(run_id, timeout=20)).is_completed
    assert ORDER[:2] == ["block", "h"]
    assert sorted(ORDER[2:]) == ["l1", "l2"]


async def test_a_priority_out_of_range_is_refused() -> None:
    """-1001, 1001, 1.5 and True are refused with a StemError; nothing is started."""
    async with open_app(one) as app:
        for bad in (-1001, 1001, 1.5, True):
            with pytest.raises(stemd.StemError, match="priority"):
                await app.start_run(one, {"label": "x"}, priority=bad)  # type: ignore[arg-type]
        assert await app.list_runs() == []
