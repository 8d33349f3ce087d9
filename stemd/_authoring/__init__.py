"""Authoring: how workflows are declared. Pure Python, no I/O."""

from __future__ import annotations

from stemd._authoring.context import FlowContext, ScriptContext, StepContext
from stemd._authoring.definitions import Flow, Script, script, step

__all__ = ("Flow", "FlowContext", "Script", "ScriptContext", "StepContext", "script", "step")
