"""Authoring: how workflows are declared. Pure Python, no I/O."""

from __future__ import annotations

from stemd._authoring.classes import handle, workflow
from stemd._authoring.context import FlowContext, ScriptContext, StepContext
from stemd._authoring.definitions import Flow, Script, script, step
from stemd._authoring.handles import Event
from stemd._authoring.limits import Limits

__all__ = (
    "Event",
    "Flow",
    "FlowContext",
    "Limits",
    "Script",
    "ScriptContext",
    "StepContext",
    "handle",
    "script",
    "step",
    "workflow",
)
