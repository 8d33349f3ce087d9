"""The contexts user code receives: FlowContext, ScriptContext and StepContext.

They are thin: every durable operation is delegated to the run's execution in the engine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from stemd.model import Retry, seconds

if TYPE_CHECKING:
    from stemd.engine.execution import Execution

__all__ = ["FlowContext", "ScriptContext", "StepContext"]

T = TypeVar("T")


def _key(workflow: str, run_id: str, scope: str, suffix: str) -> str:
    key = f"{workflow}/{run_id}"
    if scope:
        key += f"/{scope}"
    if suffix:
        key += f"/{suffix}"
    return key


def _duration(value: float | timedelta) -> float:
    secs = seconds(value, "sleep duration")
    assert secs is not None
    return secs


class _Durable:
    """The suspending operations shared by flow and script contexts."""

    _exe: Execution

    def _scope(self) -> str:
        raise NotImplementedError

    @property
    def run_id(self) -> str:
        """The id of the run being executed."""
        return self._exe.run_id

    @property
    def workflow(self) -> str:
        """The name of the workflow being executed."""
        return self._exe.workflow_name

    async def sleep(self, duration: float | timedelta) -> None:
        """Suspend the run durably for ``duration`` (seconds or a timedelta)."""
        await self._exe.sleep_for(self._scope(), _duration(duration))

    async def sleep_until(self, when: datetime) -> None:
        """Suspend the run durably until ``when`` (an aware datetime)."""
        await self._exe.sleep_until(self._scope(), when)

    async def wait_for_event(
        self, topic: str, timeout: float | timedelta | None = None, type: Any = None
    ) -> Any:
        """Suspend until ``topic`` is emitted; return its payload (decoded into ``type``).

        Raises:
            EventTimeout: on re-entry, when ``timeout`` passed before any emit.
        """
        secs = None if timeout is None else _duration(timeout)
        return await self._exe.wait_for_event(self._scope(), topic, secs, type)

    async def start_child(
        self, workflow: Any, params: Any = None, run_id: str | None = None
    ) -> str:
        """Start a child workflow once per run (the start is checkpointed); return its id."""
        return await self._exe.start_child(self._scope(), workflow, params, run_id)

    async def wait_child(self, run_id: str, type: Any = None) -> Any:
        """Suspend until the child ends; return its result (decoded into ``type``).

        Raises:
            ChildFailed: the child failed or was cancelled.
        """
        return await self._exe.wait_child(self._scope(), run_id, type)


class FlowContext(_Durable):
    """What a :class:`~stemd.Flow` step receives."""

    __slots__ = ("_exe", "attempt", "params", "previous_result", "step_index", "step_name")

    def __init__(
        self,
        exe: Execution,
        step_name: str,
        step_index: int,
        params: Any,
        previous_result: Any,
        attempt: int,
    ) -> None:
        self._exe = exe
        self.step_name = step_name
        self.step_index = step_index
        self.params = params
        self.previous_result = previous_result
        self.attempt = attempt

    def _scope(self) -> str:
        return self.step_name

    def take_resume_data(self) -> Any:
        """The payload that resumed this step, or ``None``; returned once per execution."""
        return self._exe.take_resume_data(self.step_name)

    def idempotency_key(self, suffix: str = "") -> str:
        """A key stable across re-runs and retries of this step of this run."""
        return _key(self.workflow, self.run_id, self.step_name, suffix)


class ScriptContext(_Durable):
    """What a :func:`~stemd.script` function receives as its first argument."""

    __slots__ = ("_exe",)

    def __init__(self, exe: Execution) -> None:
        self._exe = exe

    def _scope(self) -> str:
        return self._exe.current_scope()

    @property
    def params(self) -> Any:
        """The run's params, as plain decoded values."""
        return self._exe.plain_params()

    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retry: Retry | None = None,
    ) -> T:
        """Run ``fn(*args)`` as a checkpoint named ``name`` (``name#n`` for later calls)."""
        return await self._exe.call_step(name, fn, args, retry)  # type: ignore[no-any-return]

    def idempotency_key(self, suffix: str = "") -> str:
        """A key stable across re-entries of this run."""
        return _key(self.workflow, self.run_id, "", suffix)


class StepContext:
    """What a step function declaring a keyword-only ``context`` parameter receives."""

    __slots__ = ("attempt", "run_id", "step_index", "step_name", "workflow")

    def __init__(
        self, run_id: str, workflow: str, step_name: str, step_index: int, attempt: int
    ) -> None:
        self.run_id = run_id
        self.workflow = workflow
        self.step_name = step_name
        self.step_index = step_index
        self.attempt = attempt

    def idempotency_key(self, suffix: str = "") -> str:
        """A key stable across re-runs and retries of this step of this run."""
        return _key(self.workflow, self.run_id, self.step_name, suffix)
