"""stemd: a durable workflow engine for Python.

Everything in the public contract is importable from here.
"""

from __future__ import annotations

from stemd.actors.supervisor import Actor
from stemd.app import ActorFactory, App
from stemd.authoring import Flow, FlowContext, Script, ScriptContext, StepContext, script, step
from stemd.broker.base import Broker
from stemd.clock import Clock
from stemd.codec import Codec, Versioned
from stemd.errors import (
    ChildFailed,
    ConfigError,
    EventTimeout,
    InvalidRunId,
    LeaseLost,
    PayloadError,
    RestartBudgetExceeded,
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
    RunState,
    RunStatus,
    WorkflowResult,
)
from stemd.natsauth import NatsAuth
from stemd.options import AppOptions, RestartPolicy, Timing
from stemd.store.base import Store

__version__ = "0.1.0"

__all__ = (
    "Actor",
    "ActorFactory",
    "App",
    "AppOptions",
    "Broker",
    "CancellationPolicy",
    "CheckpointInfo",
    "ChildFailed",
    "Clock",
    "Codec",
    "ConfigError",
    "ErrorInfo",
    "EventTimeout",
    "Flow",
    "FlowContext",
    "InvalidRunId",
    "LeaseLost",
    "NatsAuth",
    "PayloadError",
    "RestartBudgetExceeded",
    "RestartPolicy",
    "Retry",
    "RunNotFound",
    "RunState",
    "RunStatus",
    "Script",
    "ScriptContext",
    "StemError",
    "StepContext",
    "StepFailed",
    "StepNotFound",
    "Store",
    "StoreError",
    "Timing",
    "TransportError",
    "UnknownWorkflow",
    "Versioned",
    "WorkflowResult",
    "__version__",
    "script",
    "step",
)
