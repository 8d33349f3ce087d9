"""A document approval: the run waits, durably, for a manager's decision event.

Start it with params ``{"draft": {"documentId": "doc-42"}}``, then
``stemd workflow emit approvals.manager --payload '{"approvedBy": "ana"}'``.
"""

from __future__ import annotations

import stemd

approvals = stemd.Flow("approvals.flow")


@approvals.step("draft")
async def draft(ctx: stemd.FlowContext) -> str:
    """The document under review."""
    document_id: str = ctx.params["draft"]["documentId"]
    return document_id


@approvals.step("manager-review")
async def review(ctx: stemd.FlowContext) -> str:
    """Suspends the run until someone emits on ``approvals.manager``."""
    decision = await ctx.wait_for_event("approvals.manager")
    approved_by: str = decision["approvedBy"]
    return approved_by


@approvals.step("finalize", retry=stemd.Retry(max_attempts=5, backoff=0.5, max_backoff=30.0))
async def finalize(ctx: stemd.FlowContext) -> str:
    """Retried up to five times if it raises."""
    return f"approved-by:{ctx.previous_result}"
