"""The engine: start, advance, resume, cancel and rewind runs against a Store and a Broker.

It knows nothing of SQLite or NATS; the actors and the App drive it.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from stemd._authoring.classes import definition_of
from stemd._authoring.definitions import Flow, Script
from stemd._broker.base import HandOff
from stemd._codec import Codec, check_depth
from stemd._engine.dedup import create_once
from stemd._engine.enqueue import enqueue_or_defer
from stemd._engine.events import RunEvents
from stemd._engine.execution import Aborted, Execution, Fenced, Interrupt, validate_topic
from stemd._engine.handoff import HandOffs
from stemd._engine.leases import LeaseRenewal, SliceLeases
from stemd._engine.observer import (
    LostLease,
    Observers,
    RunChanged,
    RunStarted,
    SliceFinished,
    SliceStarted,
)
from stemd._engine.params import check_params
from stemd._engine.versions import definition_for
from stemd._engine.views import new_run_id, to_run_state, unknown_workflow
from stemd._engine.waits import message, retention, timed_out
from stemd._errors import (
    LeaseLost,
    PayloadError,
    RunEnded,
    RunNotFound,
    StepNotFound,
    UnknownWorkflow,
)
from stemd._model import (
    CancellationPolicy,
    ErrorInfo,
    RunState,
    RunStatus,
    seconds,
    validate_run_id,
)
from stemd._options import DEFAULT_EVENT_RETENTION
from stemd._store.base import (
    Claim,
    CommitResult,
    Fail,
    Outcome,
    RunRecord,
    Store,
    base_step_name,
    compute_timer_at,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from datetime import timedelta

    from stemd._broker.base import Broker
    from stemd._clock import Clock
    from stemd._health import Health

__all__ = ["Engine", "Workflow", "new_run_id", "to_run_state"]
_DELIVERY_PAGE = 1000  # most runs one store call resumes for an emit

Workflow = Flow[Any, Any] | Script[Any, Any]
log = structlog.get_logger("stemd.engine")


class Engine(HandOffs):
    """Advances runs one slice at a time; every state change goes through the Store.

    Everything it uses is given at construction. Besides the store, broker, codecs and
    clock: ``events``, the channel of run status changes (run events over NATS, waiters
    of :meth:`App.wait_for_completion`); ``observers``, to which the timer, metrics and
    tracing subscribe (and which provide the trace context of new runs); ``leases``, how
    the lease of a running slice is kept (default: a renewal task per slice; a worker pool
    gives its :class:`~stemd._engine.leases.LeaseKeeper`); ``event_retention``, how many
    seconds an emitted event is kept for the runs that come to wait on its topic later
    (0: events reach only the runs waiting when they are emitted); ``health``, whether the
    process is degraded (a run it starts then is not handed to its workers claimed).
    """

    def __init__(
        self,
        *,
        store: Store,
        broker: Broker | None,
        codec: Codec,
        clock: Clock,
        workflows: dict[str, Workflow],
        owner: str,
        lease: float = 30.0,
        default_queue: str = "workflow",
        events: RunEvents | None = None,
        accept_unknown: bool = False,
        codecs: Mapping[str, Codec] | None = None,
        observers: Observers | None = None,
        leases: LeaseRenewal | None = None,
        event_retention: float = DEFAULT_EVENT_RETENTION,
        health: Health | None = None,
    ) -> None:
        self.store = store
        self.broker = broker
        self.codec = codec
        # Per-workflow codecs (encoding choices); every one reads what any other wrote.
        self.codecs = dict(codecs or {})
        self.clock = clock
        self.workflows = workflows
        self.owner = owner
        self.lease = lease
        self.default_queue = default_queue
        self.events = events if events is not None else RunEvents()
        self.accept_unknown = accept_unknown
        self.timeout_value = timed_out(codec)
        self.observers = observers if observers is not None else Observers()
        self.leases = leases if leases is not None else SliceLeases(store, clock, lease)
        self.event_retention = seconds(event_retention, "event_retention") or 0.0
        self.health = health
        # Runs claimed here and neither committed nor given back (the store was away): run id
        # -> token. RUNNING under the live session, no peer takes them: release_orphans does.
        self.orphans: dict[str, int] = {}
        # Claims that failed with an outage and may have been written (given back likewise).
        self.unsure: dict[str, int] = {}
        self.claiming: collections.Counter[str] = collections.Counter()
        self.handing: collections.Counter[str] = collections.Counter()
        self.hand_to = broker if isinstance(broker, HandOff) else None

    def codec_for(self, workflow: str) -> Codec:
        """The codec that encodes the values of ``workflow``'s runs."""
        return self.codecs.get(workflow, self.codec) if self.codecs else self.codec

    # -- follow-ups of every state change -------------------------------------------------

    async def _enqueue(self, run_id: str, queue: str, token: int) -> None:
        if self.broker is not None:
            # The key names this transition (each spends a token): a broker may drop a
            # repeat (JetStream: Nats-Msg-Id). A broker away leaves it to the sweeper.
            await enqueue_or_defer(self.broker, run_id, queue, f"{run_id}:{token}")

    def _changed(self, rec: RunRecord) -> None:
        hooks = self.observers.run_changed
        if hooks:
            event = RunChanged(
                run_id=rec.run_id, workflow=rec.workflow, status=rec.status, timer_at=rec.timer_at
            )
            for hook in hooks:
                hook(event)
        self.events.publish(
            rec.run_id,
            rec.workflow,
            rec.status,
            raw_result=rec.result,
            error=rec.error,
            cancel_reason=rec.cancel_reason,
        )

    async def _wake(self, run_ids: Iterable[str]) -> None:
        for run_id in run_ids:
            rec = await self.store.get_run(run_id)
            if rec is not None:
                self._changed(rec)
                await self._enqueue(run_id, rec.queue, rec.token)

    async def _after(self, result: CommitResult) -> None:
        rec = result.record
        self._changed(rec)
        if rec.status is RunStatus.PENDING:
            await self._enqueue(rec.run_id, rec.queue, rec.token)
        await self._wake(result.woken)

    # -- starting -------------------------------------------------------------------------

    def resolve(self, workflow: Any) -> tuple[str, Workflow | None]:
        """The name and definition of ``workflow`` (a name, a Flow/Script or a
        ``@stemd.workflow`` class)."""
        workflow = definition_of(workflow)
        if isinstance(workflow, (Flow, Script)):
            # A definition this engine was not given would be written, then fail on the
            # first worker that knows no such name: refuse it up front, like a bad name.
            if workflow.name not in self.workflows and not self.accept_unknown:
                raise UnknownWorkflow(f"workflow {workflow.name!r} is not registered")
            return workflow.name, workflow
        if not isinstance(workflow, str) or not workflow:
            raise UnknownWorkflow(f"not a workflow: {workflow!r}")
        definition = self.workflows.get(workflow)
        if definition is None and not self.accept_unknown:
            raise UnknownWorkflow(f"unknown workflow {workflow!r}")
        return workflow, definition

    async def start_run(
        self,
        workflow: Any,
        params: Any = None,
        *,
        run_id: str | None = None,
        parent_run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | None = None,
        queue: str | None = None,
        encoded_params: bytes | None = None,
        trace: str | None = None,
        dedup: tuple[str, float] | None = None,
        priority: int = 0,
    ) -> tuple[str, bool]:
        """Create a run (idempotent on ``run_id``) and enqueue it; return (id, created).

        ``trace`` is the starter's W3C ``traceparent``; with tracing on and none given, the
        caller's current span is used. ``dedup``: a key and its window in seconds (a live
        run started with the key within the window is returned instead: see
        :mod:`~stemd._engine.dedup`). ``priority``: its rank among runs waiting for a
        slot (:mod:`~stemd._engine.limits`).
        """
        name, definition = self.resolve(workflow)
        run_id = new_run_id() if run_id is None else validate_run_id(run_id)
        ttl = seconds(ttl, "ttl")
        raw = encoded_params
        if raw is None:
            check_depth(params, "params")
            raw = self.codec_for(name).encode(params)
        check_params(name, definition, raw, self.codec_for(name))
        if queue is None:
            queue = getattr(definition, "queue", None) or self.default_queue
        now = self.clock.now()
        record = RunRecord(
            run_id=run_id,
            workflow=name,
            status=RunStatus.PENDING,
            params=raw,
            created_at=now,
            updated_at=now,
            queue=queue,
            parent_run_id=parent_run_id,
            policy=policy,
            ttl=ttl,
            trace=trace if trace is not None else self.observers.trace_context(),
            version=getattr(definition, "version", None),
            priority=priority,
        )
        record.timer_at = compute_timer_at(record)
        if dedup is None:
            stored, created, handed = await self._create(record)
        else:
            stored, created = await create_once(self.store, record, *dedup, now)
            run_id, handed = stored.run_id, False
        if created:
            if self.observers.run_started:
                started = RunStarted(run_id=run_id, workflow=name)
                for hook in self.observers.run_started:
                    hook(started)
            if handed:  # its slice tells it runs; its start is told first, as any
                self.events.publish(run_id, name, RunStatus.PENDING)
            else:
                self._changed(stored)
                await self._enqueue(run_id, queue, stored.token)
        return run_id, created

    # -- executing ------------------------------------------------------------------------

    async def advance(self, run_id: str, claim: Claim | None = None) -> RunRecord | None:
        """Claim ``run_id`` (unless given its ``claim``) and run it to its next commit.

        Returns the committed record, or ``None`` when the run was not claimable or the
        lease was lost (nothing is committed then).
        """
        if claim is None:
            claim = await self._claim(run_id)
            if claim is None:
                return None
        rec = claim.record
        self._changed(rec)
        # Bound only when a slice has something to report: binding costs on every slice.
        ids = {"run_id": run_id, "workflow": rec.workflow}
        hooks = self.observers
        if not (hooks.slice_started or hooks.slice_finished):
            return await self._advance(claim, ids)
        if hooks.slice_started:
            event = SliceStarted(
                run_id=run_id,
                workflow=rec.workflow,
                attempt=rec.attempts,
                queue=rec.queue,
                trace=rec.trace,
                created_at=rec.created_at,
            )
            for hook in hooks.slice_started:
                hook(event)
        started = time.perf_counter()
        committed: list[str] = []
        try:
            return await self._advance(claim, ids, committed)
        finally:
            if hooks.slice_finished:
                finished = SliceFinished(
                    run_id=run_id,
                    workflow=rec.workflow,
                    outcome=committed[0] if committed else "abandoned",
                    duration=time.perf_counter() - started,
                )
                for end in hooks.slice_finished:
                    end(finished)

    def _lease_lost(self, rec: RunRecord) -> None:
        if self.observers.lease_lost:
            event = LostLease(run_id=rec.run_id, workflow=rec.workflow)
            for hook in self.observers.lease_lost:
                hook(event)

    async def _advance(
        self, claim: Claim, ids: dict[str, str], committed: list[str] | None = None
    ) -> RunRecord | None:
        rec = claim.record
        run_id = rec.run_id
        outcome: Outcome | None = None
        try:
            outcome = await self._execute(claim)
        except LeaseLost:
            log.warning("lease lost; abandoning the slice", **ids)
            self._lease_lost(rec)
            return None
        finally:
            if outcome is None:
                # Cancelled (shutdown) or lease lost: give the run back if we still own it.
                self.orphans[run_id] = claim.token
                with anyio.move_on_after(5, shield=True):
                    await self._give_back(run_id, claim.token)
        try:
            result = await self.store.commit(run_id, claim.token, outcome, self.clock.now())
        except LeaseLost:
            log.warning("lease lost at commit; outcome discarded", **ids, outcome=outcome.kind)
            self._lease_lost(rec)
            return None
        except Exception:
            self.orphans[run_id] = claim.token  # given back once the store answers again
            raise
        if committed is not None:
            committed.append(outcome.kind)
        if isinstance(outcome, Fail):
            log.warning(
                "run failed",
                **ids,
                status="failed",
                duration=round((self.clock.now() - rec.created_at).total_seconds(), 3),
                error=outcome.error.message,
                step=outcome.error.step,
            )
        await self._after(result)
        return result.record

    async def _execute(self, claim: Claim) -> Outcome:
        rec = claim.record
        definition = definition_for(self.workflows, rec.workflow, rec.version)
        if definition is None:
            return unknown_workflow(rec, self.owner, self.clock.now())
        execution = Execution(self, claim)
        outcome = await self.leases.keep(
            rec.run_id, claim.token, lambda: self._run(definition, execution)
        )
        if outcome is None:
            raise LeaseLost(f"run {rec.run_id}: lease lost")
        return outcome

    async def _run(self, definition: Workflow, execution: Execution) -> Outcome | None:
        """Run user code to its outcome; ``None`` when a write was refused (fenced)."""
        try:
            if isinstance(definition, Flow):
                return await execution.run_flow(definition)
            return await execution.run_script(definition)
        except Interrupt as interrupt:
            return interrupt.outcome
        except PayloadError as exc:
            return Fail(error=ErrorInfo(type="PayloadError", message=str(exc)))
        except (LeaseLost, Fenced):
            return None
        except Aborted as aborted:
            # An outage met by user code: the worker's own handling applies (the run is
            # given back, and retried).
            raise aborted.error from aborted

    # -- external transitions -------------------------------------------------------------

    async def emit(
        self, topic: str, payload: Any, *, retain: bool | float | timedelta | None = None
    ) -> int:
        """Append the event to ``topic``'s log (kept as ``retain`` says: see
        :func:`~stemd._engine.waits.retention`) and resume every run waiting on ``topic``
        that has not taken it; return how many this resumed."""
        validate_topic(topic)
        keep = retention(self.event_retention, retain)
        check_depth(payload, "event payload")
        value = self.codec.encode({"e": payload, "k": topic})
        event, done = await self.store.emit_event(
            topic, value, self.clock.now(), keep, limit=_DELIVERY_PAGE
        )
        # Each delivery is a conditional transition of one run from its wait, moving the
        # run's cursor past the event: a resumed run may run (a sweeper, another daemon)
        # and wait again while later pages are delivered, and is never given the event
        # twice. So every page is enqueued at once.
        resumed = 0
        while True:
            await self._wake(done.resumed)
            resumed += len(done.resumed)
            if done.after is None:
                return resumed
            done = await self.store.deliver_event(
                event, self.clock.now(), after=done.after, limit=_DELIVERY_PAGE
            )

    async def send(self, run_id: str, topic: str, payload: Any, key: str | None = None) -> bool:
        """Put a message in ``run_id``'s mailbox for its next wait on ``topic`` (taken at
        once if the run waits on ``topic`` now); ``False`` if a message with ``key`` was
        sent to that run before (nothing changes, even if the run has ended since).

        Raises:
            RunNotFound: there is no such run.
            RunEnded: the run has ended.
        """
        value = self.codec.encode(message(run_id, topic, payload, key))
        sent = await self.store.send_message(run_id, topic, value, self.clock.now(), key)
        if sent.outcome == "not_found":
            raise RunNotFound(f"no run {run_id}")
        if sent.outcome == "ended":
            status = sent.record.status.value if sent.record is not None else "ended"
            raise RunEnded(f"run {run_id} has ended ({status}): it takes no more messages")
        if sent.resumed and sent.record is not None:
            self._changed(sent.record)
            await self._enqueue(run_id, sent.record.queue, sent.record.token)
        return sent.outcome == "accepted"

    async def prune_events(self) -> int:
        """Forget the topic events whose retention has ended; return how many."""
        return await self.store.prune_events(self.clock.now())

    async def cancel(self, run_id: str, reason: str = "cancelled") -> bool:
        """Cancel the run and, first, its unfinished children."""
        validate_run_id(run_id)
        await self._cancel_children(run_id, reason)
        result = await self.store.cancel(run_id, reason, self.clock.now())
        if result is None:
            return False
        await self._after(result)
        return True

    async def _cancel_children(self, run_id: str, reason: str) -> None:
        for child in await self.store.list_runs(parent_run_id=run_id, limit=10_000):
            if not child.status.is_terminal:
                await self.cancel(child.run_id, f"parent cancelled: {reason}")

    async def rewind(self, run_id: str, step: str) -> bool:
        """Delete the checkpoints of ``step`` and later ones; resume the run at once."""
        validate_run_id(run_id)
        rec = await self.store.get_run(run_id)
        if rec is None:
            return False
        definition = definition_for(self.workflows, rec.workflow, rec.version)
        known = {base_step_name(c.name) for c in await self.store.get_checkpoints(run_id)}
        # A script body's own waits are recorded under the empty scope ("@sleep#0"): they
        # belong to no step, so neither "" nor a name with '@' or '#' can be rewound to.
        known.discard("")
        if isinstance(definition, Flow) and definition.has_step(step):
            known.add(step)
        if not isinstance(step, str) or step not in known:
            raise StepNotFound(f"run {run_id} has no step {step!r}")
        new = await self.store.rewind(run_id, step, self.clock.now())
        if new is None:
            return False
        self._changed(new)
        await self._enqueue(run_id, new.queue, new.token)
        return True

    async def fire_timer(self, run_id: str) -> str:
        """Act on the due timer of ``run_id``; return what was done."""
        fired = await self.store.fire_timer(run_id, self.clock.now(), self.timeout_value)
        if fired.record is not None and fired.action != "none":
            rec = fired.record
            self._changed(rec)
            if rec.status is RunStatus.PENDING:
                await self._enqueue(run_id, rec.queue, rec.token)
            if fired.action == "cancelled":
                # As for an explicit cancel: the run's unfinished children go with it.
                await self._cancel_children(run_id, rec.cancel_reason or "cancelled")
        await self._wake(fired.woken)
        return fired.action

    async def state(self, run_id: str) -> RunState | None:
        """The public state of ``run_id``, or ``None``."""
        rec = await self.store.get_run(run_id)
        if rec is None:
            return None
        return to_run_state(rec, await self.store.get_checkpoints(run_id), self.codec)
