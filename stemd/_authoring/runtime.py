"""What a context may ask of the run it executes, and which run executes in this task.

The contexts (:mod:`stemd._authoring.context`) and ``@stemd.step`` are thin: every durable
operation is asked of the run's :class:`Runtime`. The engine implements it (one per
execution slice) and sets :data:`frame` around the user code it runs. This layer knows
nothing of the engine.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from stemd._authoring.steps import StepInfo
    from stemd._model import Retry

__all__ = ["Runtime", "current_run", "current_scope", "current_script", "frame"]


class Runtime(Protocol):
    """The run being executed, as its contexts see it.

    ``scope`` is where a call is made: the step being executed, or ``""`` in a script's
    body. Suspending calls end the slice (they raise; the run resumes later and the
    same call then returns at once).
    """

    @property
    def run_id(self) -> str:
        """The id of the run."""
        ...

    @property
    def workflow_name(self) -> str:
        """The name of the run's workflow."""
        ...

    def now(self) -> datetime:
        """The engine's clock."""
        ...

    def plain_params(self) -> Any:
        """The run's params, as plain decoded values."""
        ...

    def take_resume_data(self, scope: str) -> Any:
        """The payload that resumed ``scope``, or ``None``; once per slice."""
        ...

    async def run_step(
        self,
        info: StepInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: Retry | None,
        timeout: float | None = None,
    ) -> Any:
        """Run ``info.fn(*args, **kwargs)`` as the run's next checkpoint of that name (or
        return its recorded value); raise StepFailed when it fails for good."""
        ...

    def patched(self, scope: str, change: str) -> bool:
        """Whether the run takes the path of ``change`` here (see ScriptContext.patched)."""
        ...

    async def sleep_until(self, scope: str, when: datetime) -> None:
        """Suspend until ``when``."""
        ...

    async def wait_for_event(
        self,
        scope: str,
        topic: str,
        timeout: float | None,
        type: Any,
        deadline: datetime | None = None,
        data: Any = None,
    ) -> Any:
        """Suspend until an event or message on ``topic`` is there for the run (or
        ``timeout`` seconds pass, or ``deadline``); ``data`` is shown while it waits."""
        ...

    async def wait_for_any(
        self,
        scope: str,
        topics: Sequence[str],
        timeout: float | None,
        deadline: datetime | None = None,
        data: Any = None,
    ) -> tuple[str, Any]:
        """Suspend until an event or message on one of ``topics`` is there; return
        (topic, payload) of the first."""
        ...

    async def start_child(
        self, scope: str, workflow: Any, params: Any, run_id: str | None, **options: Any
    ) -> str:
        """Start a child run once per run; return its id. ``options``: ``ttl`` (seconds)
        and ``policy`` (a :class:`~stemd._model.CancellationPolicy`) of the child."""
        ...

    async def wait_child(self, scope: str, run_id: str, type: Any) -> Any:
        """Suspend until the child ends; return its result."""
        ...


# (runtime, scope) of the run executing in this task: scope "" is a script body; any
# other is the step being executed. Set by the engine around the user code it runs.
frame: ContextVar[tuple[Runtime, str] | None] = ContextVar("stemd_frame", default=None)


def current_run() -> tuple[str, str, str] | None:
    """(run id, workflow, step) of the run executing in this task (step ``""`` in a script
    body), or ``None`` outside a run: for log lines and diagnostics."""
    current = frame.get()
    if current is None:
        return None
    runtime, scope = current
    return runtime.run_id, runtime.workflow_name, scope


def current_script() -> Runtime | None:
    """The script run whose body is executing in this task, if any."""
    current = frame.get()
    if current is None or current[1] != "":
        return None
    return current[0]


def current_scope(runtime: Runtime) -> str:
    """Where ``runtime``'s code is executing in this task: a step, or ``""`` (the body)."""
    current = frame.get()
    return current[1] if current is not None and current[0] is runtime else ""
