"""Typed decoding failures name the workflow, the step and the field."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

import stemd
from tests.helpers import open_app, wait_status

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


class Decision(msgspec.Struct):
    approved_by: str
    level: int


typed = stemd.Flow("typed.flow")


@typed.step("review")
async def review(ctx: stemd.FlowContext) -> str:
    """Waits for a Decision; returns who approved."""
    decision = await ctx.wait_for_event("typed.decision", type=Decision)
    return decision.approved_by


class Signup(msgspec.Struct):
    email: str
    age: int


@stemd.script("typed.signup")
async def signup(ctx: stemd.ScriptContext, params: Signup) -> int:
    """Returns the age."""
    return params.age


async def test_event_payload_of_wrong_shape_fails_the_run_naming_step_and_field() -> None:
    """A payload that does not decode into type= fails the run with a PayloadError whose
    message names the workflow, the step and the offending field."""
    async with open_app(typed) as app:
        run_id = await app.start_workflow(typed)
        await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)
        assert await app.emit("typed.decision", {"approved_by": "ana", "level": "high"}) == 1
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert result.error.type == "PayloadError"
    assert "workflow typed.flow step review" in result.error.message
    assert "$.level" in result.error.message


async def test_script_params_of_wrong_shape_are_refused_at_start_naming_the_field() -> None:
    """Params that do not decode into the script's annotation are refused at start with
    a PayloadError naming the workflow and the field; no run is written."""
    async with open_app(signup) as app:
        with pytest.raises(stemd.PayloadError, match=r"typed\.signup.*\$\.age"):
            await app.start_workflow(signup, {"email": "a@b.c", "age": "old"}, run_id="bad-1")
        assert await app.get_run("bad-1") is None
        assert await app.list_runs() == []


async def test_script_params_written_by_a_client_that_knows_no_type_fail_the_run(
    tmp_path: Path,
) -> None:
    """A run started by a client that does not know the workflow (no type to check) and
    whose params do not decode fails on the worker, naming the workflow and the field."""
    store = f"sqlite:///{tmp_path}/p.db"
    async with stemd.App(store=store, workers=False) as client:
        run_id = await client.start_workflow("typed.signup", {"email": "a@b.c", "age": "old"})
    async with open_app(signup, store=store) as app:
        result = await app.wait_for_completion(run_id, timeout=5)
    assert result.is_failed
    assert result.error is not None
    assert "typed.signup" in result.error.message
    assert "$.age" in result.error.message


async def test_wait_for_completion_type_mismatch_is_payload_error() -> None:
    """Asking wait_for_completion for a type the result does not fit raises PayloadError."""
    async with open_app(signup) as app:
        run_id = await app.start_workflow(signup, {"email": "a@b.c", "age": 3})
        assert (await app.wait_for_completion(run_id, timeout=5, type=int)).value == 3
        with pytest.raises(stemd.PayloadError, match=f"result of run {run_id}"):
            await app.wait_for_completion(run_id, timeout=5, type=Decision)
