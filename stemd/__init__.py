"""stemd: a durable workflow engine for Python.

Everything in the public contract is importable from here.
"""

from __future__ import annotations

from stemd._actors.supervisor import Actor
from stemd._app import ActorFactory, App
from stemd._authoring import (
    Event,
    Flow,
    FlowContext,
    Limits,
    Script,
    ScriptContext,
    StepContext,
    handle,
    script,
    step,
    workflow,
)
from stemd._broker.base import Broker
from stemd._clock import Clock
from stemd._codec import Codec, Versioned
from stemd._engine.scheduling import ScheduleNotFound
from stemd._errors import (
    ChildFailed,
    ConfigError,
    EventTimeout,
    InvalidRunId,
    LeaseLost,
    NoResponders,
    PayloadError,
    PermissionDenied,
    RestartBudgetExceeded,
    RunEnded,
    RunNotFound,
    StemError,
    StepFailed,
    StepNotFound,
    StoreError,
    TransportError,
    UnknownWorkflow,
    WorkflowChanged,
)
from stemd._model import (
    CancellationPolicy,
    CheckpointInfo,
    ErrorInfo,
    Retry,
    RunPage,
    RunState,
    RunStatus,
    WorkflowResult,
)
from stemd._natsauth import NatsAuth
from stemd._operations import Operations
from stemd._options import AppOptions, RestartPolicy, Timing
from stemd._schedules import Schedule, ScheduleError, ScheduleInfo
from stemd._store.base import Store, WorkflowInfo

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
    "Event",
    "EventTimeout",
    "Flow",
    "Limits",
    "FlowContext",
    "InvalidRunId",
    "LeaseLost",
    "NatsAuth",
    "NoResponders",
    "Operations",
    "PayloadError",
    "RestartBudgetExceeded",
    "RestartPolicy",
    "PermissionDenied",
    "Retry",
    "RunEnded",
    "RunNotFound",
    "RunPage",
    "RunState",
    "RunStatus",
    "Schedule",
    "ScheduleError",
    "ScheduleInfo",
    "ScheduleNotFound",
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
    "WorkflowChanged",
    "WorkflowInfo",
    "WorkflowResult",
    "__version__",
    "handle",
    "script",
    "step",
    "workflow",
)
