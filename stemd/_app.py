"""The App: the library entry point, a facade over the store, broker, engine and actors.

It owns what it opens, on one :class:`contextlib.AsyncExitStack` (first opened, last
closed): the store, the broker, the NATS surface's connection and the task group of the
supervisor, which runs the built-in actors (timer, sweeper, worker pool, the broker's
own), those of the NATS surface, and the extra ones given.

Its settings beyond the contract's keywords are data (:class:`~stemd._options.AppOptions`);
the daemon's config converts to them with msgspec.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from stemd._actors.probe import HealthProbe
from stemd._actors.sessions import claim_lease, lease_keeper, session_actors
from stemd._actors.supervisor import Actor, Supervisor
from stemd._actors.sweeper import Sweeper
from stemd._actors.timer import Timer
from stemd._actors.workers import WorkerPool
from stemd._app_groups import GroupOperations
from stemd._appkit import opened, registry, wait_for_end, workflow_info
from stemd._appqueries import AppQueries
from stemd._appschedules import AppSchedules, collect_schedules
from stemd._broker import broker_from_url
from stemd._broker.capabilities import HelperActors, LocalLanes
from stemd._clock import Clock, SystemClock
from stemd._codec import Codec, codec_for
from stemd._engine.dedup import dedup_window, validate_dedup_key
from stemd._engine.engine import Engine, Workflow, new_run_id
from stemd._engine.limits import LimitedStore, effective_limits, observers_of, validate_priority
from stemd._errors import StemError
from stemd._health import Health, outcome_unknown
from stemd._identifiers import validate_run_id
from stemd._model import (
    CancellationPolicy,
    RunState,
    WorkflowResult,
    seconds,
)
from stemd._options import AppOptions
from stemd._store import store_from_url
from stemd._urls import is_nats

if TYPE_CHECKING:
    from datetime import timedelta
    from types import TracebackType

    from stemd._broker.base import Broker
    from stemd._schedules import Schedule
    from stemd._store.base import Store

__all__ = ["ActorFactory", "App"]

T = TypeVar("T")

#: Makes an extra actor for an App, once the App is open (so it can reach the engine).
ActorFactory = Callable[["App"], Actor]


class App(AppQueries, AppSchedules, GroupOperations):
    """A stemd application: registers workflows, executes them (unless ``workers=False``),
    and starts, emits to and inspects runs. It implements
    :class:`~stemd._operations.Operations`, which its NATS surface serves.

    Use it as an async context manager::

        async with stemd.App(store="sqlite:///./stemd.db", workflows=[flow]) as app:
            run_id = await app.start_workflow("approvals.flow", params={...})

    Args:
        store: ``"memory://"``, ``"sqlite:///PATH"``, ``"nats://HOST:PORT"`` or a Store.
        broker: ``None`` for the in-process broker, ``"nats://HOST:PORT"`` or a Broker.
        workflows: the Flow and script objects and ``@stemd.workflow`` classes this app
            knows.
        workers: execute runs here; ``False`` makes a client only.
        concurrency: runs executed at once.
        queue: the queue this app's workers take runs from (and new runs go to).
        options: everything else that is data: timing (lease, sweep interval, shutdown
            grace), restart budget, the NATS surface, credentials, tracing
            (:class:`~stemd._options.AppOptions`).
        clock: time source (tests pass a :class:`stemd.testing.ManualClock`).
        codec: ``"json"`` or ``"msgpack"`` for stored values, or a Codec (e.g. a
            :class:`stemd._codec.CodecChain` with compression and encryption).
        workflow_codecs: codecs for the values of particular workflows, by name.
        actors: more actors for the supervisor (each made by a callable taking the open
            App), started after the built-in ones, also when ``workers=False``.
        schedules: :class:`stemd.Schedule` s started by this app's workers (with those of
            ``options.schedules``; see docs/reference/schedules.md).
    """

    def __init__(
        self,
        store: str | Store = "memory://",
        broker: str | Broker | None = None,
        workflows: Iterable[Workflow | type] = (),
        workers: bool = True,
        concurrency: int = 32,
        queue: str = "workflow",
        *,
        options: AppOptions | None = None,
        clock: Clock | None = None,
        codec: str | Codec = "json",
        workflow_codecs: Mapping[str, Codec] | None = None,
        actors: Iterable[ActorFactory] = (),
        schedules: Iterable[Schedule] = (),
    ) -> None:
        if options is not None and not isinstance(options, AppOptions):
            raise StemError("options must be a stemd.AppOptions")
        self.options = options or AppOptions()
        seconds(self.options.event_retention, "event_retention")  # a clear error now
        self._store_arg = store
        self._broker_arg = broker
        self.workflows = registry(workflows)
        self.schedules = collect_schedules(self.options.schedules, schedules)
        self.workers = workers
        self.concurrency = concurrency
        self.queue = queue
        self.clock: Clock = clock or SystemClock()
        self.codec: Codec = codec_for(codec) if isinstance(codec, str) else codec
        self.workflow_codecs = dict(workflow_codecs or {})
        self.owner = (
            self.options.owner or f"{socket.gethostname()}:{os.getpid()}:{new_run_id()[-8:]}"
        )
        self._actor_factories = list(actors)
        self._engine: Engine | None = None
        self._stack: AsyncExitStack | None = None
        self._drained = False
        self.supervisor: Supervisor | None = None
        self.timer: Timer | None = None
        self.sweeper: Sweeper | None = None
        self.pool: WorkerPool | None = None
        self.health = Health()  # degraded while a dependency is away (see stemd._health)

    def register(self, *workflows: Workflow | type) -> None:
        """Add workflows (before the app is entered)."""
        self.workflows.merge(registry(workflows).every())

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
        if self._stack is not None:
            raise StemError("the App is open already")
        async with AsyncExitStack() as stack:
            await self._open(stack)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        if stack is None:
            return None
        # The exit stack closes, in reverse order, what _open entered.
        return await stack.__aexit__(exc_type, exc, tb)

    async def _open(self, stack: AsyncExitStack) -> None:
        """Open everything, each piece entered on ``stack`` (which closes it)."""
        store = self._make_store()
        await stack.enter_async_context(opened(store))
        if self.workers and self.workflows:
            # What this app serves, for `stemd workflow types` and the CLI's check of the
            # names it starts; clients (workers=False) serve nothing.
            infos = [workflow_info(wf) for wf in self.workflows.values()]
            await store.register_workflows(infos, self.clock.now())
        broker = self._make_broker()
        if broker is not None:
            await stack.enter_async_context(opened(broker))
        self._drained = False
        self._engine = engine = Engine(
            store=store,
            broker=broker,
            codec=self.codec,
            codecs=self.workflow_codecs,
            clock=self.clock,
            workflows=self.workflows,
            owner=self.owner,
            lease=claim_lease(store, self.workers, self.options.timing.lease),
            default_queue=self.queue,
            accept_unknown=not self.workers and not self.workflows,
            observers=observers_of(store),
            # Workers keep their slices' leases from one task (WorkerPool), under a session.
            leases=lease_keeper(store, self.clock, self.workers, self.options.timing.lease),
            event_retention=self.options.event_retention,
            health=self.health,
        )
        stack.callback(self._closed)
        if self.options.tracing:
            from stemd._tracing import install_tracing

            install_tracing(self)
        children = self._builtin_actors(engine, broker)
        if self.options.nats is not None:
            from stemd._actors.surface import open_nats_surface

            children += await stack.enter_async_context(
                open_nats_surface(
                    self,
                    engine.events,
                    self.options.nats,
                    self.options.prefix,
                    decode=self.codec.decode,
                    name=f"stemd-api:{self.owner}",
                    auth=self.options.nats_auth,
                )
            )
        children += [factory(self) for factory in self._actor_factories]
        if children:
            self.supervisor = Supervisor(children, self.options.restart, health=self.health)
            tg = await stack.enter_async_context(anyio.create_task_group())
            # Leaving the App stops its actors (the exit stack then waits for them).
            stack.callback(tg.cancel_scope.cancel)
            stack.push_async_exit(self._drain_on_exit)
            await tg.start(self.supervisor.run)

    def _make_store(self) -> Store:
        store = self._store_arg
        if isinstance(store, str):
            store = store_from_url(store, **self._nats_options(store))
        limits = effective_limits(self.workflows, self.options.limits) if self.workers else {}
        if not limits:
            return store
        # Slots live as long as the session renews them: a dead process frees them after
        # `lease` of silence, as its runs are taken over.
        ttl = self.options.timing.lease
        return LimitedStore(store, limits, self.workflow_codecs, self.codec, slot_ttl=ttl)

    def _make_broker(self) -> Broker | None:
        if self._broker_arg is None:
            return broker_from_url(None) if self.workers else None
        if isinstance(self._broker_arg, str):
            return broker_from_url(self._broker_arg, **self._nats_options(self._broker_arg))
        return self._broker_arg

    def _builtin_actors(self, engine: Engine, broker: Broker | None) -> list[Actor]:
        if not self.workers:
            return []
        assert broker is not None
        timing = self.options.timing
        sweep = timing.sweep_interval if timing.sweep_interval is not None else timing.lease / 2
        self.timer = Timer(engine)
        self.sweeper = Sweeper(engine, broker, sweep)
        self.pool = WorkerPool(engine, broker, self.queue, self.concurrency, health=self.health)
        if isinstance(broker, LocalLanes):  # a few rounds of work, see stemd._broker.lane
            broker.serve_locally(self.queue, 4 * self.concurrency)
        probe = HealthProbe(engine.store, [engine.store, broker], self.health)
        # The session first: a crashed predecessor's runs are taken before work starts.
        actors: list[Actor] = [*session_actors(engine, broker, timing.lease)]
        actors += [self.timer, self.sweeper, self.pool, probe, *self._schedule_actors(engine)]
        if isinstance(broker, HelperActors):
            actors += broker.actors(engine)
        return actors

    def _nats_options(self, url: str) -> dict[str, Any]:
        """The options of a store or broker URL: ``auth`` for a NATS one."""
        if self.options.nats_auth is not None and is_nats(url):
            return {"auth": self.options.nats_auth}
        return {}

    def _closed(self) -> None:
        self._engine = None

    async def _drain_on_exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Leaving the App normally: give the slices in flight the shutdown grace."""
        grace = self.options.timing.shutdown_grace
        if exc_type is None and grace > 0 and not self._drained:
            await self.drain(grace)
        return False

    async def drain(self, grace: float | timedelta | None = None) -> int:
        """Stop executing, gracefully: the workers take no new run, and the slices in
        flight get ``grace`` seconds (``None``: as long as they need) to finish and commit.
        Return how many were still running when the grace ended; those are cancelled when
        the App closes, and their runs released (re-run from the interrupted step by the
        next worker that takes them).

        The App stays open for everything else (start, emit, inspect); it executes nothing
        more. Closing an App that has not drained drains it with
        ``options.timing.shutdown_grace`` first, when that is above zero.
        """
        limit = seconds(grace, "grace")
        if self._engine is None:
            raise StemError("the App is not open: use `async with App(...) as app`")
        self._drained = True
        if self.pool is None:
            return 0
        return await self.pool.drain(limit)

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
        dedup_key: str | None = None,
        priority: int = 0,
    ) -> str:
        """Start a run; return its id. With a ``run_id`` that exists, start nothing; with
        a ``dedup_key`` that a live run of the workflow was started with within its
        window (``Limits(dedup_window=…)``, default one hour), start nothing and return
        that run's id. ``priority`` (-1000 to 1000): among runs waiting for a slot of a
        concurrency limit, a higher one takes a freed slot first.

        Raises:
            UnknownWorkflow: the workflow is not registered.
            PayloadError: ``params`` do not encode.
            InvalidRunId: ``run_id`` is not a valid run id.
        """
        run_id, _ = await self.start_run(
            workflow,
            params,
            run_id=run_id,
            policy=policy,
            ttl=ttl,
            queue=queue,
            dedup_key=dedup_key,
            priority=priority,
        )
        return run_id

    async def start_run(
        self,
        workflow: Any,
        params: Any = None,
        *,
        run_id: str | None = None,
        policy: CancellationPolicy | None = None,
        ttl: float | timedelta | None = None,
        trace: str | None = None,
        queue: str | None = None,
        parent_run_id: str | None = None,
        dedup_key: str | None = None,
        priority: int = 0,
    ) -> tuple[str, bool]:
        """Start a run; return its id and whether it was created (``False``: a run with
        ``run_id`` existed, or a live run started with ``dedup_key`` within the workflow's
        window, and nothing was started: that run's id). ``trace``: the starter's W3C
        ``traceparent`` (default: the caller's current span, when tracing).
        ``parent_run_id``: start it as a child of that run (``RunNotFound`` if none).
        ``priority``: as for :meth:`start_workflow`.

        Raises:
            UnknownWorkflow: the workflow is not registered.
            PayloadError: ``params`` do not encode.
            InvalidRunId: ``run_id`` is not a valid run id.
        """
        if policy is not None and not isinstance(policy, CancellationPolicy):
            raise StemError("policy must be a stemd.CancellationPolicy")
        await self._check_parent(parent_run_id)
        priority = validate_priority(priority)
        dedup = None
        if dedup_key is not None:
            name, definition = self.engine.resolve(workflow)
            window = dedup_window(name, definition, self.options.limits)
            dedup = (validate_dedup_key(dedup_key), window)
        # An outage's error names the run id to start again with (no second run).
        with outcome_unknown(run_id := new_run_id() if run_id is None else run_id):
            return await self.engine.start_run(
                workflow,
                params,
                run_id=run_id,
                parent_run_id=parent_run_id,
                policy=policy,
                ttl=seconds(ttl, "ttl"),
                queue=queue,
                trace=trace,
                dedup=dedup,
                priority=priority,
            )

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
        return await wait_for_end(
            self.engine, self.codec, run_id, seconds(timeout, "timeout"), type
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
        ``options.event_retention`` seconds; seconds or a timedelta, that long; ``False``
        (or 0) keeps it not at all: only the runs waiting now get it.
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

    async def cancel_run(self, run_id: str, reason: str = "cancelled") -> bool:
        """Cancel a run (and its unfinished children); ``False`` if unknown or ended."""
        return await self.engine.cancel(run_id, reason)

    async def rewind_run(self, run_id: str, step: str) -> bool:
        """Re-run ``run_id`` from ``step`` on: its checkpoints and later ones are deleted.

        Raises:
            StepNotFound: the run has no such step.
        """
        return await self.engine.rewind(run_id, step)
