"""The bundled example workflows (plugins/stemd-examples) do what their docs say."""

from __future__ import annotations

import pytest
from stemd_examples import approvals, fanout, flaky, signup, square

import stemd
from tests.helpers import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

EXAMPLES = [approvals, fanout, flaky, signup, square]


async def test_every_example_completes() -> None:
    """Approval after an emit, signup after its polls, flaky after two failures, fan-out
    with its children; a flaky step that never succeeds fails the run with its error."""
    async with stemd.App(store="memory://", workflows=EXAMPLES) as app:
        doc = await app.start_workflow(approvals, {"draft": {"documentId": "doc-42"}})
        user = await app.start_workflow(signup, "ana@example.com")
        ok = await app.start_workflow(flaky)
        bad = await app.start_workflow(flaky, {"fail_times": 9})
        parent = await app.start_workflow(fanout, {"numbers": [1, 2, 3]})

        async def approval_waits() -> bool:
            return bool(await app.runs_waiting_on("approvals.manager"))

        await wait_until(approval_waits, what="the approval run to wait for its event")
        assert await app.emit("approvals.manager", {"approvedBy": "ana"}) == 1

        result = await app.wait_for_completion(doc, timeout=10)
        assert result.value == "approved-by:ana"
        result = await app.wait_for_completion(user, timeout=10)
        assert result.value["verified"] is True
        assert result.state is not None
        assert [n for n in result.state.checkpoints if n.startswith("poll")] == [
            "poll",
            "poll#1",
            "poll#2",
        ]
        result = await app.wait_for_completion(ok, timeout=10)
        assert result.value == "fetched after 3 attempts"
        result = await app.wait_for_completion(bad, timeout=10)
        assert result.is_failed
        assert result.error is not None
        assert (result.error.type, result.error.attempts) == ("ConnectionError", 5)
        result = await app.wait_for_completion(parent, timeout=10)
        assert result.value["total"] == 14
        children = await app.list_runs(workflow="examples.square")
        assert {c.parent_run_id for c in children} == {parent}
