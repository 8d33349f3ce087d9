"""The wire requests of the CLI's group operations (``stemd workflow pause|resume|cancel``
through a daemon)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from stemd import _wire as wire
from stemd._engine.groups import group_filter

if TYPE_CHECKING:
    from stemd._engine.groups import GroupOp

__all__ = ["group_request"]


def group_request(
    op: GroupOp, filters: dict[str, Any], reason: str, dry_run: bool, new_runs: bool
) -> tuple[str, msgspec.Struct]:
    """The wire verb and request of a group operation (validated here first: a clear
    error before anything is sent)."""
    body: dict[str, Any] = {
        k: list(v) if k == "run_ids" else v
        for k, v in msgspec.structs.asdict(group_filter(**filters)).items()
        if v is not None
    }
    if op == "pause":
        return op, wire.PauseRequest(dry_run=dry_run, new_runs=new_runs, **body)
    if op == "resume":
        return op, wire.ResumeRequest(dry_run=dry_run, new_runs=new_runs, **body)
    return "cancel_many", wire.CancelManyRequest(reason=reason, dry_run=dry_run, **body)
