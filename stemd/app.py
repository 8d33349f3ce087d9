"""The App: the library entry point that wires store, broker, engine and actors."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from stemd.actors.supervisor import RestartPolicy, Supervisor
from stemd.actors.sweeper import Sweeper
from stemd.actors.timer import Timer
from stemd.actors.workers import WorkerPool
from stemd.broker import broker_from_url
from stemd.broker.base import Broker
from stemd.clock import Clock, SystemClock
from stemd.codec import Codec, codec_for, convert
from stemd.engine.engine import (
    DEFAULT_EVENT_RETENTION,
    Engine,
    Workflow,
    new_run_id,
    to_run_state,
)
from stemd.engine.execution import validate_topic
from stemd.engine.leases import LeaseKeeper
from stemd.engine.observer import Observers
from stemd.errors import RunNotFound, StemError
from stemd.model import (
    CancellationPolicy,
    RunPage,
    RunState,
    RunStatus,
    WorkflowResult,
    seconds,
    validate_run_id,
)
from stemd.natsauth import NatsAuth
from stemd.store import store_from_url
from stemd.store.base import Page, Store, WorkflowInfo

__all__ = ["App"]

T = TypeVar("T")


def _registry(workflows: Iterable[Workflow]) -> dict[str, Workflow]:
    out: dict[str, Workflow] = {}
    for wf in workflows:
        name = getattr(wf, "name", None)
        if not isinstance(name, str) or getattr(wf, "kind", None) not in ("flow", "script"):
            raise TypeError(f"not a workflow (Flow or @stemd.script): {wf!r}")
        if name in out and out[name] is not wf:
            raise ValueError(f"two workflows are named {name!r}")
        out[name] = wf
    return out


def workflow_info(wf: Workflow) -> WorkflowInfo:
    """What the store records about a workflow served here: its name, kind, version and,
    for a flow, its declared steps in order."""
    steps = getattr(wf, "steps", None) if wf.kind == "flow" else None
    version = getattr(wf, "version", None)
    return WorkflowInfo(
        name=wf.name,
        kind="flow" if wf.kind == "flow" else "script",
        steps=None if steps is None else tuple(getattr(s, "name", str(s)) for s in steps),
        version=version if isinstance(version, (str, int)) else None,
    )


def _status(value: RunStatus | str | None) -> RunStatus | None:
    if value is None or isinstance(value, RunStatus):
        return value
    try:
        return RunStatus(str(value).lower())
    except ValueError:
        choices = ", ".join(s.value for s in RunStatus)
        raise StemError(f"unknown status {value!r} (one of {choices})") from None


# The limit that means "all of them".
_ALL = 2**62


def _positive(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise StemError("limit must be a positive integer")
    return limit


def _cursor(after: object) -> int | None:
    """The store position of a page cursor (``None``: the first page)."""
    if after is None:
        return None
    if isinstance(after, str) and after.isascii() and after.isdigit() and len(after) <= 19:
        return int(after)
    raise StemError(f"invalid cursor {after!r}: give the next of a previous page")


class App:
    """A stemd application: registers workflows, executes them (unless ``workers=False``),
    and starts, emits to and inspects runs.

    Use it as an async context manager::

        async with stemd.App(store="sqlite:///./stemd.db", workflows=[flow]) as app:
            run_id = await app.start_workflow("approvals.flow", params={...})

    Args:
        store: ``"memory://"``, ``"sqlite:///PATH"``, ``"nats://HOST:PORT"`` or a Store.
        broker: ``None`` for the in-process broker, ``"nats://HOST:PORT"`` or a Broker.
        workflows: the Flow and script objects this app knows.
        workers: execute runs here; ``False`` makes a client only.
        concurrency: runs executed at once.
        queue: the queue this app's workers take runs from (and new runs go to).
        clock: time source (tests pass a :class:`stemd.testing.ManualClock`).
        codec: ``"json"`` or ``"msgpack"`` for stored values, or a Codec (e.g. a
            :class:`stemd.codec.CodecChain` with compression and encryption).
        workflow_codecs: codecs for the values of particular workflows, by name.
        lease: seconds a worker owns a run between renewals.
        sweep_interval: seconds between two sweeps for orphaned runnable runs.
        actors: more actors for the supervisor (each a callable taking the App and
            returning an object with ``name`` and ``async run(*, task_status)``), started
            after the built-in ones, also when ``workers=False``.
        tracing: make OpenTelemetry spans with the global tracer provider (needs the
            ``otel`` extra); see :mod:`stemd.tracing`.
        nats: ``"nats://HOST:PORT"`` to serve the wire protocol there: the
            ``<prefix>.api.*`` responder, durable submission on ``<prefix>.submit.>``
            and run events on ``<prefix>.events.run.<run_id>``.
        prefix: the subject prefix of the wire protocol.
        nats_auth: credentials and TLS (a :class:`stemd.natsauth.NatsAuth`) for every NATS
            connection the App opens: a NATS store or broker given as a URL, and ``nats``.
        event_retention: seconds (or a timedelta) an emitted event is kept for the runs
            that come to wait on its topic later (default one hour; 0: an event reaches
            only the runs waiting when it is emitted). Each kept event costs its payload's
            bytes in the store for that long; see docs/howto/correlating-events.md.
    """

    def __init__(
        self,
        store: str | Store = "memory://",
        broker: str | Broker | None = None,
        workflows: Iterable[Workflow] = (),
        workers: bool = True,
        concurrency: int = 32,
        queue: str = "workflow",
        *,
        clock: Clock | None = None,
        codec: str | Codec = "json",
        workflow_codecs: Mapping[str, Codec] | None = None,
        lease: float = 30.0,
        sweep_interval: float | None = None,
        restart_policy: RestartPolicy | None = None,
        owner: str | None = None,
        actors: Iterable[Any] = (),
        tracing: bool = False,
        nats: str | None = None,
        prefix: str = "stem",
        nats_auth: NatsAuth | None = None,
        event_retention: float | timedelta = DEFAULT_EVENT_RETENTION,
    ) -> None:
        self._store_arg = store
        self._broker_arg = broker
        self.workflows = _registry(workflows)
        self.workers = workers
        self.concurrency = concurrency
        self.queue = queue
        self.clock: Clock = clock or SystemClock()
        self.codec: Codec = codec_for(codec) if isinstance(codec, str) else codec
        self.workflow_codecs = dict(workflow_codecs or {})
        self.lease = lease
        self.sweep_interval = sweep_interval if sweep_interval is not None else lease / 2
        self.restart_policy = restart_policy
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{new_run_id()[-8:]}"
        self._engine: Engine | None = None
        self._tg: TaskGroup | None = None
        self.supervisor: Supervisor | None = None
        self.timer: Timer | None = None
        self.sweeper: Sweeper | None = None
        self.pool: WorkerPool | None = None
        self._extra_actors: list[Any] = list(actors)
        self.tracing = tracing
        self.nats = nats
        self.prefix = prefix
        self.nats_auth = nats_auth
        self.event_retention = seconds(event_retention, "event_retention") or 0.0
        self._nats_conn: Any = None

    def register(self, *workflows: Workflow) -> None:
        """Add workflows (before the app is entered)."""
        merged = _registry([*self.workflows.values(), *workflows])
        self.workflows.clear()
        self.workflows.update(merged)

    @property
    def engine(self) -> Engine:
        """The engine (only while the app is open)."""
        if self._engine is None:
            raise StemError("the App is not open: use `async with App(...) as app`")
        return self._engine

    @property
    def store(self) -> Store:
        """The store (only while the app is open)."""
        return self.engine.store

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> App:
        store = (
            store_from_url(self._store_arg, **self._nats_options(self._store_arg))
            if isinstance(self._store_arg, str)
            else self._store_arg
        )
        await store.open()
        try:
            if self.workers and self.workflows:
                # What this app serves, for `stemd workflow types` and the CLI's check of
                # the names it starts; clients (workers=False) serve nothing.
                infos = [workflow_info(wf) for wf in self.workflows.values()]
                await store.register_workflows(infos, self.clock.now())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.close()
            raise
        broker: Broker | None
        if self._broker_arg is None:
            broker = broker_from_url(None) if self.workers else None
        elif isinstance(self._broker_arg, str):
            broker = broker_from_url(self._broker_arg, **self._nats_options(self._broker_arg))
        else:
            broker = self._broker_arg
        try:
            if broker is not None:
                await broker.open()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.close()
            raise
        observers = Observers()
        if self.tracing:
            from stemd.tracing import TracingObserver

            observers.subscribe(TracingObserver())
        self._engine = Engine(
            store=store,
            broker=broker,
            codec=self.codec,
            codecs=self.workflow_codecs,
            clock=self.clock,
            workflows=self.workflows,
            owner=self.owner,
            lease=self.lease,
            default_queue=self.queue,
            accept_unknown=not self.workers and not self.workflows,
            observers=observers,
            # Workers keep their slices' leases from one task (see WorkerPool).
            leases=LeaseKeeper(store, self.clock, self.lease) if self.workers else None,
            event_retention=self.event_retention,
        )
        children: list[Any] = []
        if self.workers:
            assert broker is not None
            self.timer = Timer(self._engine)
            self.sweeper = Sweeper(self._engine, broker, self.sweep_interval)
            self.pool = WorkerPool(self._engine, broker, self.queue, self.concurrency)
            children += [self.timer, self.sweeper, self.pool]
            # Actors a broker needs (JetStream: the dead-letter handler).
            children += getattr(broker, "actors", lambda engine: [])(self._engine)
        if self.nats is not None:
            from stemd.actors.surface import open_nats_surface

            try:
                self._nats_conn, surface = await open_nats_surface(
                    self, self.nats, self.prefix, auth=self.nats_auth
                )
            except BaseException as exc:
                await self._close(type(exc), exc, exc.__traceback__)
                raise
            children += surface
        children += [factory(self) for factory in self._extra_actors]
        if children:
            self.supervisor = Supervisor(children, self.restart_policy)
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
            try:
                await self._tg.start(self.supervisor.run)
            except BaseException as exc:
                await self._close(type(exc), exc, exc.__traceback__)
                raise
        return self

    def _nats_options(self, url: str) -> dict[str, Any]:
        """The options of a store or broker URL: ``auth`` for a NATS one."""
        if self.nats_auth is not None and url.startswith(("nats://", "tls://")):
            return {"auth": self.nats_auth}
        return {}

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return await self._close(exc_type, exc, tb)

    async def _close(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        engine, self._engine = self._engine, None
        tg, self._tg = self._tg, None
        suppress: bool | None = None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                suppress = await tg.__aexit__(exc_type, exc, tb)
        finally:
            conn, self._nats_conn = self._nats_conn, None
            if conn is not None:
                with anyio.move_on_after(10, shield=True):
                    await conn.close()
            if engine is not None:
                with anyio.move_on_after(10, shield=True):
                    if engine.broker is not None:
                        await engine.broker.close()
                    await engine.store.close()
        return suppress

    async def serve_forever(self) -> None:
        """Run the actors until cancelled."""
        await anyio.sleep_forever()

    # -- the API --------------------------------------------------------------------------

    async def start_workflow(
        self,
        workflow: Any,
        params: Any = None,
        run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | timedelta | None = None,
        *,
        queue: str | None = None,
    ) -> str:
        """Start a run; return its id. With a ``run_id`` that exists, start nothing.

        Raises:
            UnknownWorkflow: the workflow is not registered.
            PayloadError: ``params`` do not encode.
            InvalidRunId: ``run_id`` is not a valid run id.
        """
        if policy is not None and not isinstance(policy, CancellationPolicy):
            raise StemError("policy must be a stemd.CancellationPolicy")
        run_id, _ = await self.engine.start_run(
            workflow, params, run_id=run_id, policy=policy, ttl=seconds(ttl, "ttl"), queue=queue
        )
        return run_id

    async def get_run(self, run_id: str) -> RunState | None:
        """The state of ``run_id``, or ``None`` if there is no such run."""
        validate_run_id(run_id)
        return await self.engine.state(run_id)

    async def wait_for_completion(
        self, run_id: str, timeout: float | timedelta | None = None, type: Any = None
    ) -> WorkflowResult[Any]:
        """Wait until the run completes, fails or is cancelled, or ``timeout`` passes.

        Raises:
            RunNotFound: there is no such run.
        """
        validate_run_id(run_id)
        engine = self.engine
        limit = seconds(timeout, "timeout")
        poll = 0.01
        rec = None
        with anyio.move_on_after(limit):
            while True:
                ended = engine.events.ended(run_id)
                rec = await engine.store.get_run(run_id)
                if rec is None:
                    raise RunNotFound(f"no run {run_id}")
                if rec.status.is_terminal:
                    break
                # Runs finished by another process are seen by polling, with backoff.
                with anyio.move_on_after(poll):
                    await ended.wait()
                poll = min(poll * 2, 0.5)
        if rec is None:
            rec = await engine.store.get_run(run_id)
            if rec is None:
                raise RunNotFound(f"no run {run_id}")
        state = to_run_state(rec, await engine.store.get_checkpoints(run_id), self.codec)
        value = None
        if rec.status is RunStatus.COMPLETED and rec.result is not None:
            if type is None:
                value = state.result
            else:
                value = convert(state.result, type, what=f"result of run {run_id}")
        return WorkflowResult(
            run_id=run_id,
            status=rec.status,
            value=value,
            error=rec.error,
            state=state,
            timed_out=not rec.status.is_terminal,
        )

    async def emit(
        self,
        topic: str,
        payload: Any = None,
        *,
        retain: bool | float | timedelta | None = None,
    ) -> int:
        """Emit an event on ``topic``: resume every run waiting on it now, each once, and
        return how many; keep it for the runs that come to wait on ``topic`` later.

        Every run created before the emit takes the event once, in order with the
        topic's other events: at once if it waits on ``topic`` now, else at its next wait
        on ``topic`` within the retention. ``retain``: ``None`` or ``True`` keeps it
        ``event_retention`` seconds (the App's); seconds or a timedelta, that long;
        ``False`` (or 0) keeps it not at all: only the runs waiting now get it.
        """
        return await self.engine.emit(topic, payload, retain=retain)

    async def send(
        self, run_id: str, topic: str, payload: Any = None, key: str | None = None
    ) -> bool:
        """Send a message to one run: its next ``wait_for_event(topic)`` (or
        ``wait_for_any`` with ``topic``) takes it, at once if it waits on ``topic`` now;
        messages are kept until taken and taken oldest first, each exactly once.

        ``key`` makes the send idempotent: a second send with the same key to the same
        run changes nothing and returns ``False`` (also after the run has ended: a
        retried send is not an error); otherwise ``True`` (accepted). Keys are
        remembered as long as the run is.

        Raises:
            RunNotFound: there is no such run.
            RunEnded: the run has ended (completed, failed or cancelled).
        """
        return await self.engine.send(run_id, topic, payload, key)

    async def list_runs(
        self,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 100,
        *,
        after: str | None = None,
    ) -> list[RunState]:
        """Runs, newest first, optionally filtered by workflow and status; from the cursor
        ``after`` on (the ``next`` of a :meth:`page_runs`)."""
        return (await self.page_runs(workflow, status, limit, after=after)).runs

    async def page_runs(
        self,
        workflow: str | None = None,
        status: RunStatus | str | None = None,
        limit: int = 100,
        *,
        after: str | None = None,
    ) -> RunPage:
        """A page of runs, newest first, and the cursor of the next page (``next``:
        ``None`` on the last)::

            page = await app.page_runs(status="suspended", limit=500)
            while page.next is not None:
                page = await app.page_runs(status="suspended", limit=500, after=page.next)
        """
        limit = _positive(limit)
        page = await self.store.page_runs(
            workflow=workflow, status=_status(status), limit=limit, after=_cursor(after)
        )
        return await self._page(page)

    async def runs_waiting_on(
        self, topic: str, limit: int | None = None, *, after: str | None = None
    ) -> list[RunState]:
        """Runs suspended waiting for an event or message on ``topic``, oldest first: all
        of them, or at most ``limit`` from the cursor ``after`` on (see
        :meth:`page_waiting`)."""
        # Without a limit, all of them in one store call (a KV store reads its index once).
        return (await self.page_waiting(topic, _ALL if limit is None else limit, after=after)).runs

    async def page_waiting(
        self, topic: str, limit: int = 1000, *, after: str | None = None
    ) -> RunPage:
        """A page of the runs waiting on ``topic`` (oldest first) and the cursor of the
        next page (``None`` on the last)."""
        validate_topic(topic)
        limit = _positive(limit)
        page = await self.store.page_waiting(topic, limit=limit, after=_cursor(after))
        return await self._page(page)

    async def _page(self, page: Page) -> RunPage:
        runs = [await self._state(r) for r in page.records]
        return RunPage(runs=runs, next=None if page.next is None else str(page.next))

    async def cancel_run(self, run_id: str, reason: str = "cancelled") -> bool:
        """Cancel a run (and its unfinished children); ``False`` if unknown or ended."""
        return await self.engine.cancel(run_id, reason)

    async def rewind_run(self, run_id: str, step: str) -> bool:
        """Re-run ``run_id`` from ``step`` on: its checkpoints and later ones are deleted.

        Raises:
            StepNotFound: the run has no such step.
        """
        return await self.engine.rewind(run_id, step)

    async def registered_workflows(self) -> list[WorkflowInfo]:
        """The workflows served here and those recorded in the store by every app with
        workers (a daemon) that has used it, by name. A store records a workflow when such
        an app starts, and never forgets it."""
        found = {w.name: w for w in await self.store.registered_workflows()}
        if self.workers:
            for wf in self.workflows.values():
                found.setdefault(wf.name, workflow_info(wf))
        return [found[name] for name in sorted(found)]

    async def _state(self, rec: Any) -> RunState:
        return to_run_state(rec, await self.store.get_checkpoints(rec.run_id), self.codec)
