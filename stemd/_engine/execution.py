"""One execution slice of one run: replay its checkpoints, run user code until the run
completes, suspends or fails, and return that outcome for the engine to commit."""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from stemd._authoring.classes import workflow_name
from stemd._authoring.context import FlowContext, ScriptContext, StepContext
from stemd._authoring.runtime import current_run, current_scope, frame
from stemd._codec import Codec, convert
from stemd._engine.entries import entries, with_entry
from stemd._engine.failures import compensate, decode_error, record_failure, timed
from stemd._engine.interrupts import (
    Aborted,
    Exhausted,
    Fenced,
    Interrupt,
    for_user_code,
    user_error,
)
from stemd._engine.observer import Observers, StepFinished, StepStarted
from stemd._engine.params import decode_params
from stemd._engine.replay import Replay, failed_key
from stemd._engine.waits import any_topics, suspend_on, taken
from stemd._errors import ChildFailed, PayloadError, StemError, StepFailed
from stemd._identifiers import validate_topic
from stemd._model import ErrorInfo, Retry, RunStatus, validate_run_id
from stemd._store.base import (
    Checkpoint,
    Claim,
    Complete,
    Fail,
    Outcome,
    RetryLater,
    Suspend,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from stemd._authoring.definitions import Flow, Script
    from stemd._authoring.steps import StepInfo
    from stemd._engine.host import Host

__all__ = [
    "Aborted",
    "Execution",
    "Fenced",
    "Interrupt",
    "current_run",
    "validate_topic",
]

_NO_RETRY = Retry()


def _error(exc: BaseException, step: str | None, attempts: int | None) -> ErrorInfo:
    return ErrorInfo(type=type(exc).__name__, message=str(exc), step=step, attempts=attempts)


def _child_id(parent: str) -> str:
    return f"{parent[:100]}-{secrets.token_hex(8)}"


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
        self.replay = Replay(claim.record, claim.checkpoints, self.now)
        # Scopes that may not wait (a flow's compensations): their keys would be the step's.
        self.no_waits: set[str] = set()
        # patched() markers not written yet: they go with the next write of the slice.
        self._markers: list[Checkpoint] = []
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
        if scope in self.no_waits:
            raise StemError(f"{self._where(scope)}: a compensation cannot sleep, wait or start")
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

    async def save(self, name: str, value: bytes) -> None:
        """Record checkpoint ``name`` now (after the markers not written yet)."""
        with for_user_code():
            while self._markers:
                marker = self._markers[0]
                await self.host.store.save_checkpoint(self.run_id, self.token, marker, self.now())
                del self._markers[0]
            await self.host.store.save_checkpoint(
                self.run_id, self.token, Checkpoint(name, value), self.now()
            )
        self.checkpoints[name] = value

    def _attempt(self, name: str) -> int:
        rec = self.record
        return rec.step_failures + 1 if rec.attempt_step == name else 1

    async def call_step(
        self,
        name: str,
        call: Callable[[int], Awaitable[Any]],
        retry: Retry | None,
        timeout: float | None = None,
    ) -> bytes:
        """Run one attempt of a step (cancelled after ``timeout`` seconds) and encode its
        value; turn an error into a retry (raised as :class:`Interrupt`) or a failure for
        good (raised as :class:`Exhausted`)."""
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
            value = await timed(call, attempt, timeout, name)
        except Interrupt:
            if observed:
                self._step_finished(hooks, name, attempt, started, "suspended", None)
            raise
        except BaseExceptionGroup as group:
            exc: Exception = user_error(group)
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
        raise Exhausted(Fail(error=err))

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
        self.replay.check_steps(flow.name, flow.has_step)
        previous: Any = None
        last = len(flow.steps) - 1
        for st in flow.steps:
            self.replay.take("", st.name, f"step {st.name!r} of flow {flow.name!r}")
            raw = self.checkpoints.get(st.name)
            if raw is not None:
                previous = self.codec.decode(raw)
                continue
            if failed_key(st.name) in self.checkpoints:
                return await compensate(self, flow, st, params)
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
                encoded = await self.call_step(st.name, call, st.retry, st.timeout)
            except Exhausted as stop:
                if not flow.compensates(st.index):
                    raise
                await record_failure(self, st.name, stop)
                return await compensate(self, flow, st, params)
            except Interrupt as stop:
                if isinstance(stop.outcome, Suspend):  # recorded for FlowContext.iteration
                    entry = self.codec.encode(suspended + self._attempt(st.name))
                    stop.outcome = with_entry(stop.outcome, st.name, suspended, entry)
                raise
            if st.index == last:
                return Complete(result=encoded, checkpoints=(Checkpoint(st.name, encoded),))
            await self.save(st.name, encoded)
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
        except Interrupt as stop:
            if self._markers and isinstance(stop.outcome, (Suspend, Complete)):
                cps = (*self._markers, *stop.outcome.checkpoints)
                stop.outcome = msgspec.structs.replace(stop.outcome, checkpoints=cps)
            raise
        except BaseExceptionGroup as group:
            return Fail(error=_error(user_error(group), None, None))
        except StepFailed as failed:  # uncaught: the run fails with the step's error
            return Fail(error=failed.error)
        except Exception as exc:
            return Fail(error=_error(exc, None, None))
        finally:
            frame.reset(token)
        try:
            return Complete(result=self.codec.encode(value), checkpoints=tuple(self._markers))
        except PayloadError as exc:
            return Fail(error=_error(exc, None, None))

    async def run_step(
        self,
        info: StepInfo,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retry: Retry | None,
        timeout: float | None = None,
    ) -> Any:
        n = self._step_counts.get(info.name, 0)
        self._step_counts[info.name] = n + 1
        name = info.name if n == 0 else f"{info.name}#{n}"
        index = self._step_index
        self._step_index += 1
        if not current_scope(self):  # a ctx.step inside a step is replayed with that step
            self.replay.take("", name, f"step {name!r}")
        raw = self.checkpoints.get(name)
        if raw is None:
            failed = self.checkpoints.get(failed_key(name))
            if failed is not None:
                raise StepFailed(name, decode_error(self.codec, failed))

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

            limit = info.timeout if timeout is None else timeout
            try:
                raw = await self.call_step(name, call, retry or info.retry, limit)
            except Exhausted as stop:
                raise StepFailed(name, await record_failure(self, name, stop)) from None
            await self.save(name, raw)
        try:
            return self.codec.decode(raw, type=info.return_type)
        except PayloadError as exc:
            err = PayloadError(f"step {name} of {self.workflow_name}: {exc}")
            raise Interrupt(Fail(error=_error(err, name, None))) from None

    def patched(self, scope: str, change: str) -> bool:
        key = f"{scope}@patch#{self._counters.get(f'{scope}@patch', 0)}"
        raw = self.checkpoints.get(key)
        if raw is None and self.replay.passed(scope):
            return False  # the run went past this point before the change
        self._key(scope, "patch")
        self.replay.take(scope, key, f"patched({change!r})")
        if raw is None:  # recorded with the next write (none before it: a replay agrees)
            marker = Checkpoint(key, self.codec.encode(change))
            self._markers.append(marker)
            self.checkpoints[key] = marker.value
        elif self.codec.decode(raw) != change:
            raise self.replay.stop(f"patched({self.codec.decode(raw)!r})", f"patched({change!r})")
        return True

    # -- suspensions ----------------------------------------------------------------------

    async def sleep_until(self, scope: str, when: datetime) -> None:
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise StemError("sleep_until needs an aware datetime")
        await self._sleep(scope, self._key(scope, "sleep"), when)

    async def _sleep(self, scope: str, key: str, when: datetime) -> None:
        raw = self.checkpoints.get(key)
        now = self.now()
        if raw is not None:
            self.replay.take(scope, key, "sleep")
            wake = self.codec.decode(raw, type=datetime)
            if now >= wake:
                return
            raise Interrupt(Suspend(resume_at=wake))
        # A sleep records nothing when its wake time has passed as it is called: a run that
        # recorded calls after this one went past it so (whatever the time is now).
        if when <= now or self.replay.passed(scope):
            return
        self.replay.take(scope, key, "sleep")
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
        requested = f"wait_for_event({topic!r})"
        self.replay.take(scope, key, requested)
        raw = self.checkpoints.get(key)
        if raw is not None:
            envelope = taken(self.codec, raw, (topic,), self.replay, requested)
            got = envelope.get("k")
            if isinstance(got, str) and got != topic:
                raise self.replay.stop(f"wait_for_event({got!r}) (checkpoint {key!r})", requested)
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
        requested = f"wait_for_any({list(wanted)!r})"
        self.replay.take(scope, key, requested)
        raw = self.checkpoints.get(key)
        if raw is not None:
            envelope = taken(self.codec, raw, wanted, self.replay, requested)
            topic = envelope.get("k")
            if not isinstance(topic, str):
                topic = wanted[0]  # pragma: no cover - every envelope stemd writes has it
            if topic not in wanted:
                raise self.replay.stop(f"a wait that took {topic!r} ({key!r})", requested)
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
        # A first start checks the workflow is known (an unknown one records nothing); a
        # replay only needs its name, which a process serving the parent alone may not know.
        name = workflow_name(workflow) if raw is not None else self.host.resolve(workflow)[0]
        requested = f"start_child({name!r})"
        self.replay.take(scope, key, requested)
        if raw is not None:
            child_id: str = self.codec.decode(raw, type=str)
            with for_user_code():
                child = await self.host.store.get_run(child_id)
            if child is not None and (child.workflow != name or run_id not in (None, child_id)):
                recorded = f"start_child({child.workflow!r}) of run {child_id} ({key!r})"
                raise self.replay.stop(recorded, requested)
            if child is not None:
                return child_id
            # The id is recorded before the child is created: the slice that recorded it
            # ended before the creation. Create it now (creation is idempotent on the id).
        else:
            # A fresh id, recorded first: a re-entry finds it and never starts a second
            # child, while a rewind that deletes the record starts a new one.
            child_id = _child_id(self.run_id) if run_id is None else validate_run_id(run_id)
            await self.save(key, self.codec.encode(child_id))
        with for_user_code():  # options: the child's ttl and policy
            await self.host.start_run(
                workflow, params, run_id=child_id, parent_run_id=self.run_id, **options
            )
        return child_id

    async def wait_child(self, scope: str, child_id: str, type: Any) -> Any:
        key = self._key(scope, "join")
        requested = f"wait_child({child_id!r})"
        self.replay.take(scope, key, requested)
        raw = self.checkpoints.get(key)
        if raw is None:
            with for_user_code():
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
            joined = {"s": child.status.value, "r": result, "m": message, "c": child_id}
            raw = self.codec.encode(joined)
            await self.save(key, raw)
        envelope = self.codec.decode(raw)
        if envelope.get("c", child_id) != child_id:
            raise self.replay.stop(f"wait_child({envelope['c']!r}) ({key!r})", requested)
        if envelope["s"] != RunStatus.COMPLETED.value:
            raise ChildFailed(child_id, envelope["s"], envelope["m"])
        return convert(
            envelope["r"], type, what=f"{self._where(scope)}: result of child {child_id}"
        )
