"""Authoring: how workflows are declared. Pure Python, no I/O."""

from __future__ import annotations

from stemd.authoring.classes import handle, workflow
from stemd.authoring.context import FlowContext, ScriptContext, StepContext
from stemd.authoring.definitions import Flow, Script, script, step
from stemd.authoring.handles import Event

__all__ = (
    "Event",
    "Flow",
    "FlowContext",
    "Script",
    "ScriptContext",
    "StepContext",
    "handle",
    "script",
    "step",
    "workflow",
)
