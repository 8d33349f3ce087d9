"""The contexts user code receives: FlowContext, ScriptContext and StepContext.

They are thin: every durable operation is asked of the run's :class:`Runtime`.
"""

from __future__ import annotations

import inspect
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic

from typing_extensions import TypeVar

from stemd._authoring.runtime import Runtime, current_scope
from stemd._authoring.steps import StepInfo, check_name, step_info, step_timeout
from stemd._model import CancellationPolicy, Retry, seconds

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = ["FlowContext", "ScriptContext", "StepContext"]

T = TypeVar("T")
P = TypeVar("P", default=Any)


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

    _rt: Runtime

    def _scope(self) -> str:
        raise NotImplementedError

    @property
    def run_id(self) -> str:
        """The id of the run being executed."""
        return self._rt.run_id

    @property
    def workflow(self) -> str:
        """The name of the workflow being executed."""
        return self._rt.workflow_name

    async def sleep(self, duration: float | timedelta) -> None:
        """Suspend the run durably for ``duration`` (seconds or a timedelta)."""
        when = self._rt.now() + timedelta(seconds=_duration(duration))
        await self._rt.sleep_until(self._scope(), when)

    async def sleep_until(self, when: datetime) -> None:
        """Suspend the run durably until ``when`` (an aware datetime)."""
        await self._rt.sleep_until(self._scope(), when)

    async def wait_for_event(
        self,
        topic: str,
        timeout: float | timedelta | None = None,
        type: Any = None,
        deadline: datetime | None = None,
        data: Any = None,
    ) -> Any:
        """Suspend until an event or message on ``topic`` is there for this run; return
        its payload (decoded into ``type``).

        The run takes, in order and each once, the events emitted to ``topic`` after it
        was created (or after its previous wait on ``topic`` took one) that are still
        kept, and the messages sent to it on ``topic`` (those first, oldest first): one
        already there is taken at once.

        Args:
            topic: the topic of the events (or messages) waited for.
            timeout: seconds (or a timedelta) from now after which the wait times out.
            type: decode the payload into this type (``None``: as decoded).
            deadline: an aware datetime at which the wait times out (the earlier of the
                two applies).
            data: what this wait is about (any value the codec encodes), stored with the
                wait and shown by ``get_run``, ``runs_waiting_on``, the CLI and the wire
                while the run waits (``RunState.wait_data``).

        Raises:
            EventTimeout: on re-entry, when the timeout or deadline passed first.
        """
        secs = None if timeout is None else _duration(timeout)
        return await self._rt.wait_for_event(self._scope(), topic, secs, type, deadline, data)

    async def wait_for_any(
        self,
        topics: Sequence[str],
        timeout: float | timedelta | None = None,
        *,
        deadline: datetime | None = None,
        data: Any = None,
    ) -> tuple[str, Any]:
        """Suspend until an event or message on any of ``topics`` is there for this run;
        return ``(topic, payload)`` of the first (messages first, then the oldest event).
        What arrived on the other topics stays for later waits.

        Raises:
            EventTimeout: on re-entry, when the timeout or deadline passed first.
        """
        secs = None if timeout is None else _duration(timeout)
        return await self._rt.wait_for_any(self._scope(), topics, secs, deadline, data)

    async def start_child(
        self,
        workflow: Any,
        params: Any = None,
        run_id: str | None = None,
        *,
        ttl: float | timedelta | None = None,
        policy: CancellationPolicy | None = None,
    ) -> str:
        """Start a child workflow once per run (the start is checkpointed); return its id.

        ``ttl`` (seconds or a timedelta) deletes the child that long after it ends;
        ``policy`` is its :class:`~stemd.CancellationPolicy` (as for
        :meth:`stemd.App.start_workflow`).
        """
        if policy is not None and not isinstance(policy, CancellationPolicy):
            raise TypeError("policy must be a stemd.CancellationPolicy")
        secs = seconds(ttl, "ttl")
        return await self._rt.start_child(
            self._scope(), workflow, params, run_id, ttl=secs, policy=policy
        )

    async def wait_child(self, run_id: str, type: Any = None) -> Any:
        """Suspend until the child ends; return its result (decoded into ``type``).

        Raises:
            ChildFailed: the child failed or was cancelled.
        """
        return await self._rt.wait_child(self._scope(), run_id, type)


class FlowContext(_Durable, Generic[P]):
    """What a :class:`~stemd.Flow` step receives.

    ``params`` are the run's params, decoded into the flow's params type when it declares
    one (``FlowContext[P]``). ``iteration`` counts the entries of this step in this run:
    1 on the first, then one more for each time the step ended its execution slice and
    was entered again, as recorded: each suspension of the step (a sleep, an event wait,
    a child wait) and each failed attempt (a retry). It is read from the run's recorded
    state, so every process sees the same number; an execution lost to a crash or given
    back at shutdown ended nothing durably and is not counted, and a rewind to or before
    the step starts it at 1 again.
    """

    __slots__ = (
        "_rt",
        "attempt",
        "iteration",
        "params",
        "previous_result",
        "step_index",
        "step_name",
    )

    params: P

    def __init__(
        self,
        runtime: Runtime,
        step_name: str,
        step_index: int,
        params: P,
        previous_result: Any,
        attempt: int,
        iteration: int = 1,
    ) -> None:
        self._rt = runtime
        self.step_name = step_name
        self.step_index = step_index
        self.params = params
        self.previous_result = previous_result
        self.attempt = attempt
        self.iteration = iteration

    def _scope(self) -> str:
        return self.step_name

    def take_resume_data(self) -> Any:
        """The payload that resumed this step, or ``None``; returned once per execution."""
        return self._rt.take_resume_data(self.step_name)

    def idempotency_key(self, suffix: str = "") -> str:
        """A key stable across re-runs and retries of this step of this run."""
        return _key(self.workflow, self.run_id, self.step_name, suffix)


class ScriptContext(_Durable):
    """What a :func:`~stemd.script` function receives as its first argument."""

    __slots__ = ("_rt",)

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    def _scope(self) -> str:
        return current_scope(self._rt)

    @property
    def params(self) -> Any:
        """The run's params, as plain decoded values."""
        return self._rt.plain_params()

    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retry: Retry | None = None,
        timeout: float | timedelta | None = None,
    ) -> T:
        """Run ``fn(*args)`` as a checkpoint named ``name`` (``name#n`` for later calls).

        Args:
            name: the checkpoint's name.
            fn: the async function to run.
            *args: its arguments.
            retry: how failed attempts are retried (default: ``fn``'s ``@stemd.step``
                retry, else not at all).
            timeout: seconds (or a timedelta) an attempt may take: one that takes longer
                is cancelled and counts as a failed attempt (a ``TimeoutError``).

        Raises:
            StepFailed: the step failed for good (its retries are exhausted); recorded, so
                a replay raises it again here without running the step.
        """
        limit = step_timeout(timeout)
        # '#' and '@' are how occurrences and internal checkpoints are named: a user name
        # with them could collide with another checkpoint or be hidden from RunState.
        check_name("step", name)
        info = getattr(fn, "__stemd_step__", None)
        if isinstance(info, StepInfo) and inspect.ismethod(fn):
            # A @stemd.step method, bound: its StepInfo holds the plain function.
            args = (fn.__self__, *args)
        if not isinstance(info, StepInfo) or info.name != name:
            info = step_info(getattr(info, "fn", fn), name, None)
        return await self._rt.run_step(info, args, {}, retry, limit)  # type: ignore[no-any-return]

    def patched(self, change: str) -> bool:
        """Whether this run takes the code path of ``change`` at this point.

        ``True`` for a run that reaches this point under code with the change (recorded:
        its replays say ``True`` again); ``False`` for a run that went past this point
        before the change was deployed, so that it keeps following the code it recorded.
        Once no run older than the change is left, the check and the old path can go.

        Example::

            if ctx.patched("send-receipt"):
                await ctx.step("receipt", send_receipt, order)
        """
        check_name("change id", change)
        return self._rt.patched(self._scope(), change)

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
