"""The wire protocol's verbs for forks and schedules (see :mod:`stemd._wire`):
``fork``, ``schedules``, ``pause_schedule``, ``resume_schedule``, ``trigger_schedule``.

Reference: docs/reference/wire.md.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from stemd._identifiers import RunId
from stemd._schedules import ScheduleInfo

__all__ = [
    "REPLIES",
    "REQUESTS",
    "ForkReply",
    "ForkRequest",
    "ScheduleNameRequest",
    "ScheduleReply",
    "SchedulesReply",
    "SchedulesRequest",
    "TriggerReply",
    "TriggerRequest",
]

ScheduleName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,100}$")]
StepName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class ForkRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``fork``: a new run of ``run_id``'s workflow and params with its checkpoints from
    before ``step``, run from ``step`` on."""

    run_id: RunId
    step: StepName


class ForkReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to ``fork``: the new run's id."""

    run_id: str


class SchedulesRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``schedules``: every schedule recorded in the store, with its state; no fields."""


class SchedulesReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to ``schedules``: by name."""

    schedules: list[ScheduleInfo]


class ScheduleNameRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``pause_schedule``, ``resume_schedule``: the schedule ``name``."""

    name: ScheduleName


class ScheduleReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to ``pause_schedule`` and ``resume_schedule``: the schedule now."""

    schedule: ScheduleInfo


class TriggerRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``trigger_schedule``: start a run of schedule ``name`` now (``run_id`` makes it
    idempotent)."""

    name: ScheduleName
    run_id: RunId | None = None


class TriggerReply(msgspec.Struct, frozen=True, kw_only=True):
    """Reply to ``trigger_schedule``: the run's id."""

    run_id: str


REQUESTS: dict[str, type[msgspec.Struct]] = {
    "fork": ForkRequest,
    "schedules": SchedulesRequest,
    "pause_schedule": ScheduleNameRequest,
    "resume_schedule": ScheduleNameRequest,
    "trigger_schedule": TriggerRequest,
}
REPLIES: dict[str, type[msgspec.Struct]] = {
    "fork": ForkReply,
    "schedules": SchedulesReply,
    "pause_schedule": ScheduleReply,
    "resume_schedule": ScheduleReply,
    "trigger_schedule": TriggerReply,
}
