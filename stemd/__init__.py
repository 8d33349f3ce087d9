"""stemd: a durable workflow engine for Python.

Everything in the public contract is importable from here.
"""

from __future__ import annotations

from stemd.app import App
from stemd.authoring import Flow, FlowContext, Script, ScriptContext, StepContext, script, step
from stemd.codec import Versioned
from stemd.errors import (
    ChildFailed,
    ConfigError,
    EventTimeout,
    InvalidRunId,
    LeaseLost,
    PayloadError,
    RunEnded,
    RunNotFound,
    StemError,
    StepFailed,
    StepNotFound,
    StoreError,
    TransportError,
    UnknownWorkflow,
)
from stemd.model import (
    CancellationPolicy,
    CheckpointInfo,
    ErrorInfo,
    Retry,
    RunPage,
    RunState,
    RunStatus,
    WorkflowResult,
)

__version__ = "0.1.0"

__all__ = (
    "App",
    "CancellationPolicy",
    "CheckpointInfo",
    "ChildFailed",
    "ConfigError",
    "ErrorInfo",
    "EventTimeout",
    "Flow",
    "FlowContext",
    "InvalidRunId",
    "LeaseLost",
    "PayloadError",
    "Retry",
    "RunEnded",
    "RunNotFound",
    "RunPage",
    "RunState",
    "RunStatus",
    "Script",
    "ScriptContext",
    "StemError",
    "StepContext",
    "StepFailed",
    "StepNotFound",
    "StoreError",
    "TransportError",
    "UnknownWorkflow",
    "Versioned",
    "WorkflowResult",
    "__version__",
    "script",
    "step",
)
