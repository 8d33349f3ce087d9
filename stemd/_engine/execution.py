"""One execution slice of one run: replay its checkpoints, run user code until the run
completes, suspends or fails, and return that outcome for the engine to commit."""

from __future__ import annotations

import contextlib
import secrets
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from stemd._authoring.context import FlowContext, ScriptContext, StepContext
from stemd._authoring.runtime import current_run, frame
from stemd._codec import Codec, convert
from stemd._engine.entries import entries, with_entry
from stemd._engine.observer import Observers, StepFinished, StepStarted
from stemd._engine.params import decode_params
from stemd._engine.waits import any_topics, suspend_on, taken
from stemd._errors import (
    ChildFailed,
    LeaseLost,
    PayloadError,
    StemError,
    StoreError,
    TransportError,
)
from stemd._identifiers import validate_topic
from stemd._model import ErrorInfo, Retry, RunStatus, validate_run_id
from stemd._store.base import (
    Checkpoint,
    Claim,
    Complete,
    Fail,
    Outcome,
    RetryLater,
    Store,
    Suspend,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

    from stemd._authoring.definitions import Flow, Script
    from stemd._authoring.steps import StepInfo
    from stemd._clock import Clock

__all__ = [
    "Aborted",
    "Execution",
    "Fenced",
    "Host",
    "Interrupt",
    "current_run",
    "validate_topic",
]

_NO_RETRY = Retry()


class Interrupt(BaseException):
    """Ends an execution slice early with an outcome (a suspension, a retry, a failure).

    A BaseException on purpose: user code's ``except Exception`` must not swallow it,
    or a suspended run would carry on as if its wait had returned.
    """

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.kind)
        self.outcome = outcome


class Fenced(BaseException):
    """A write of this slice was refused: the run's fencing token has moved on (a takeover
    after the lease expired, a cancel, a rewind), and the slice must stop.

    A BaseException on purpose: user code's ``except Exception`` must not swallow it, or a
    fenced-out worker would go on running steps, and their side effects, that the run's
    new owner runs again.
    """


class Aborted(BaseException):
    """The store or the transport failed on a call made for user code (a checkpoint, a
    child's start): the slice must stop and the run be retried later.

    A BaseException on purpose: user code's ``except Exception`` must not turn an outage
    into the failure of a step or of the run.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _for_user_code() -> Iterator[None]:
    """Around a store or broker call made for user code: a refused write stops the slice
    as :class:`Fenced`, an outage as :class:`Aborted`."""
    try:
        yield
    except LeaseLost as exc:
        raise Fenced(str(exc)) from None
    except (StoreError, TransportError) as exc:
        raise Aborted(exc) from exc


def _user_error(group: BaseExceptionGroup[BaseException]) -> Exception:
    """Sort out what a task group inside user code raised.

    A suspension raised in a child task reaches the engine wrapped in a group: re-raise
    the :class:`Interrupt` itself when nothing else went wrong. Otherwise return the
    group's errors (an ExceptionGroup without the interrupts) to be handled as the step's
    failure; anything else (a BaseException of the user's own) is re-raised as it is.
    """
    fenced, _ = group.split((Fenced, Aborted))
    if fenced is not None:
        stop: BaseException = fenced
        while isinstance(stop, BaseExceptionGroup):
            stop = stop.exceptions[0]
        raise stop from None
    interrupts, errors = group.split(Interrupt)
    if errors is None:
        leaf: BaseException | None = interrupts
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        assert isinstance(leaf, Interrupt)
        raise leaf from None
    if isinstance(errors, Exception):
        return errors
    raise group


def _error(exc: BaseException, step: str | None, attempts: int | None) -> ErrorInfo:
    return ErrorInfo(type=type(exc).__name__, message=str(exc), step=step, attempts=attempts)


def _child_id(parent: str) -> str:
    return f"{parent[:100]}-{secrets.token_hex(8)}"


class Host(Protocol):
    """What an execution needs of the engine that runs it."""

    @property
    def store(self) -> Store: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def observers(self) -> Observers: ...

    def codec_for(self, workflow: str) -> Codec: ...

    def resolve(self, workflow: Any) -> tuple[str, Any]: ...

    async def start_run(
        self,
        workflow: Any,
        params: Any = None,
        *,
        run_id: str | None = None,
        parent_run_id: str | None = None,
    ) -> tuple[str, bool]: ...


class Execution:
    """The state of one run during one slice, shared by its contexts: the engine's
    implementation of :class:`~stemd._authoring.runtime.Runtime`."""

    def __init__(self, host: Host, claim: Claim) -> None:
        self.host = host
        self.codec: Codec = host.codec_for(claim.record.workflow)
        self.record = claim.record
        self.run_id = claim.record.run_id
        self.workflow_name = claim.record.workflow
        self.token = claim.token
        self.checkpoints: dict[str, bytes] = {c.name: c.value for c in claim.checkpoints}
        self._counters: dict[str, int] = {}
        self._step_counts: dict[str, int] = {}
        self._step_index = 0
        self._resume_taken = False
        self._plain_params: Any = None
        self._params_decoded = False

    # -- helpers --------------------------------------------------------------------------

    def now(self) -> datetime:
        return self.host.clock.now()

    def _key(self, scope: str, kind: str) -> str:
        base = f"{scope}@{kind}"
        n = self._counters.get(base, 0)
        self._counters[base] = n + 1
        return f"{base}#{n}"

    def _where(self, scope: str) -> str:
        """``workflow <name> step <step>`` (or ``body``) for error messages."""
        return f"workflow {self.workflow_name} " + (f"step {scope}" if scope else "body")

    def plain_params(self) -> Any:
        if not self._params_decoded:
            self._plain_params = self.codec.decode(self.record.params)
            self._params_decoded = True
        return self._plain_params

    async def _save(self, name: str, value: bytes) -> None:
        with _for_user_code():
            await self.host.store.save_checkpoint(
                self.run_id, self.token, Checkpoint(name, value), self.now()
            )
        self.checkpoints[name] = value

    def _attempt(self, name: str) -> int:
        rec = self.record
        return rec.step_failures + 1 if rec.attempt_step == name else 1

    async def _call_step(
        self, name: str, call: Callable[[int], Awaitable[Any]], retry: Retry | None
    ) -> bytes:
        """Run one attempt of a step and encode its value; turn an error into a retry
        or a failure (raised as :class:`Interrupt`)."""
        attempt = self._attempt(name)
        hooks = self.host.observers
        observed = bool(hooks.step_started or hooks.step_finished)
        started = 0.0
        if observed:
            if hooks.step_started:
                event = StepStarted(
                    run_id=self.run_id, workflow=self.workflow_name, step=name, attempt=attempt
                )
                for hook in hooks.step_started:
                    hook(event)
            started = time.perf_counter()
        try:
            value = await call(attempt)
        except Interrupt:
            if observed:
                self._step_finished(hooks, name, attempt, started, "suspended", None)
            raise
        except BaseExceptionGroup as group:
            exc: Exception = _user_error(group)
        except Exception as caught:
            exc = caught
        else:
            if observed:
                self._step_finished(hooks, name, attempt, started, "ok", None)
            return self.codec.encode(value)
        if observed:
            self._step_finished(hooks, name, attempt, started, "error", exc)
        policy = retry or _NO_RETRY
        err = _error(exc, name, attempt)
        if attempt < policy.max_attempts and not getattr(exc, "non_retryable", False):
            at = self.now() + timedelta(seconds=policy.delay(attempt))
            raise Interrupt(RetryLater(step=name, failures=attempt, resume_at=at, error=err))
        raise Interrupt(Fail(error=err))

    def _step_finished(
        self,
        hooks: Observers,
        name: str,
        attempt: int,
        started: float,
        result: str,
        error: BaseException | None,
    ) -> None:
        if not hooks.step_finished:
            return
        event = StepFinished(
            run_id=self.run_id,
            workflow=self.workflow_name,
            step=name,
            attempt=attempt,
            duration=time.perf_counter() - started,
            result=result,
            error=error,
        )
        for hook in hooks.step_finished:
            hook(event)

    # -- flows ----------------------------------------------------------------------------

    async def run_flow(self, flow: Flow[Any, Any]) -> Outcome:
        params = self.plain_params()
        if flow.params_type is not Any:
            params = decode_params(flow.name, flow.params_type, self.record.params, self.codec)
        previous: Any = None
        last = len(flow.steps) - 1
        for st in flow.steps:
            raw = self.checkpoints.get(st.name)
            if raw is not None:
                previous = self.codec.decode(raw)
                continue
            suspended = entries(self.checkpoints, st.name)

            async def call(
                attempt: int, st: Any = st, previous: Any = previous, n: int = suspended
            ) -> Any:
                # Entered once, then again after each recorded suspension and each retry.
                ctx = FlowContext(self, st.name, st.index, params, previous, attempt, n + attempt)
                token = frame.set((self, st.name))
                try:
                    return await st.fn(ctx)
                finally:
                    frame.reset(token)

            try:
                encoded = await self._call_step(st.name, call, st.retry)
            except Interrupt as stop:
                if isinstance(stop.outcome, Suspend):  # recorded for FlowContext.iteration
                    entry = self.codec.encode(suspended + self._attempt(st.name))
                    stop.outcome = with_entry(stop.outcome, st.name, suspended, entry)
                raise
            if st.index == last:
                return Complete(result=encoded, checkpoints=(Checkpoint(st.name, encoded),))
            await self._save(st.name, encoded)
            previous = self.codec.decode(encoded)
        if last < 0:
            return Complete(result=self.codec.encode(None))
        return Complete(result=self.checkpoints[flow.steps[last].name])

    # -- scripts --------------------------------------------------------------------------

    async def run_script(self, script: Script[Any, Any]) -> Outcome:
        args: tuple[Any, ...] = ()
        if script.takes_params:
            try:
                params = self.codec.decode(self.record.params, type=script.params_type)
            except PayloadError as exc:
                return Fail(
                    error=_error(PayloadError(f"params of {script.name}: {exc}"), None, None)
                )
            args = (params,)
        token = frame.set((self, ""))
        try:
            value = await script.fn(ScriptContext(self), *args)
        except Interrupt:
            raise
        except BaseExceptionGroup as group:
            return Fail(error=_error(_user_error(group), None, None))
        except Exception as exc:
            return Fail(error=_error(exc, None, None))
        finally:
            frame.reset(token)
        try:
            return Complete(result=self.codec.encode(value))
        except PayloadError as exc:
            return Fail(error=_error(exc, None, None))

    async def run_step(
        self, info: StepInfo, args: tuple[Any, ...], kwargs: dict[str, Any], retry: Retry | None
    ) -> Any:
        n = self._step_counts.get(info.name, 0)
        self._step_counts[info.name] = n + 1
        name = info.name if n == 0 else f"{info.name}#{n}"
        index = self._step_index
        self._step_index += 1
        raw = self.checkpoints.get(name)
        if raw is None:

            async def call(attempt: int) -> Any:
                kw = kwargs
                if info.wants_context:
                    ctx = StepContext(self.run_id, self.workflow_name, name, index, attempt)
                    kw = {**kwargs, "context": ctx}
                token = frame.set((self, name))
                try:
                    return await info.fn(*args, **kw)
                finally:
                    frame.reset(token)

            raw = await self._call_step(name, call, retry or info.retry)
            await self._save(name, raw)
        try:
            return self.codec.decode(raw, type=info.return_type)
        except PayloadError as exc:
            err = PayloadError(f"step {name} of {self.workflow_name}: {exc}")
            raise Interrupt(Fail(error=_error(err, name, None))) from None

    # -- suspensions ----------------------------------------------------------------------

    async def sleep_until(self, scope: str, when: datetime) -> None:
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise StemError("sleep_until needs an aware datetime")
        await self._sleep(self._key(scope, "sleep"), when)

    async def _sleep(self, key: str, when: datetime) -> None:
        raw = self.checkpoints.get(key)
        now = self.now()
        if raw is not None:
            wake = self.codec.decode(raw, type=datetime)
            if now >= wake:
                return
            raise Interrupt(Suspend(resume_at=wake))
        if when <= now:
            return
        raise Interrupt(
            Suspend(checkpoints=(Checkpoint(key, self.codec.encode(when)),), resume_at=when)
        )

    async def wait_for_event(
        self,
        scope: str,
        topic: str,
        timeout: float | None,
        type: Any,
        deadline: datetime | None = None,
        data: Any = None,
    ) -> Any:
        validate_topic(topic)
        key = self._key(scope, "event")
        raw = self.checkpoints.get(key)
        if raw is not None:
            envelope = taken(self.codec, raw, topic)
            return convert(envelope.get("e"), type, what=f"{self._where(scope)}: event {topic!r}")
        at = (timeout, deadline)
        raise Interrupt(
            suspend_on(self.codec, self.now(), (topic,), key, at, data, "wait_for_event")
        )

    async def wait_for_any(
        self,
        scope: str,
        topics: Sequence[str],
        timeout: float | None,
        deadline: datetime | None = None,
        data: Any = None,
    ) -> tuple[str, Any]:
        wanted = any_topics(topics)
        key = self._key(scope, "any")
        raw = self.checkpoints.get(key)
        if raw is not None:
            envelope = taken(self.codec, raw, ", ".join(wanted))
            topic = envelope.get("k")
            if not isinstance(topic, str):
                topic = wanted[0]  # pragma: no cover - every envelope stemd writes has it
            return topic, envelope.get("e")
        at = (timeout, deadline)
        raise Interrupt(suspend_on(self.codec, self.now(), wanted, key, at, data, "wait_for_any"))

    def take_resume_data(self, scope: str) -> Any:
        key = self.record.resume_key
        if self._resume_taken or key is None:
            return None
        if not key.startswith((f"{scope}@event#", f"{scope}@any#")):
            return None
        raw = self.checkpoints.get(key)
        if raw is None:
            return None
        self._resume_taken = True
        return self.codec.decode(raw).get("e")

    # -- children -------------------------------------------------------------------------

    async def start_child(
        self, scope: str, workflow: Any, params: Any, run_id: str | None, **options: Any
    ) -> str:
        key = self._key(scope, "child")
        raw = self.checkpoints.get(key)
        if raw is not None:
            child_id: str = self.codec.decode(raw, type=str)
            with _for_user_code():
                if await self.host.store.get_run(child_id) is not None:
                    return child_id
            # Recorded, not created (that slice ended first): create it (idempotent on the id).
        else:
            self.host.resolve(workflow)  # an unknown workflow records nothing
            # A fresh id, recorded first: a re-entry never starts a second child.
            child_id = _child_id(self.run_id) if run_id is None else validate_run_id(run_id)
            await self._save(key, self.codec.encode(child_id))
        with _for_user_code():  # options: the child's ttl and policy
            await self.host.start_run(
                workflow, params, run_id=child_id, parent_run_id=self.run_id, **options
            )
        return child_id

    async def wait_child(self, scope: str, child_id: str, type: Any) -> Any:
        key = self._key(scope, "join")
        raw = self.checkpoints.get(key)
        if raw is None:
            with _for_user_code():
                child = await self.host.store.get_run(child_id)
            if child is None:
                raise ChildFailed(child_id, "missing", "no such run")
            if not child.status.is_terminal:
                raise Interrupt(Suspend(wait_child=child_id, wait_key=key))
            result = self.codec.decode(child.result) if child.result is not None else None
            message = ""
            if child.error is not None:
                message = f"{child.error.type}: {child.error.message}"
            elif child.cancel_reason is not None:
                message = child.cancel_reason
            raw = self.codec.encode({"s": child.status.value, "r": result, "m": message})
            await self._save(key, raw)
        envelope = self.codec.decode(raw)
        if envelope["s"] != RunStatus.COMPLETED.value:
            raise ChildFailed(child_id, envelope["s"], envelope["m"])
        return convert(
            envelope["r"], type, what=f"{self._where(scope)}: result of child {child_id}"
        )
