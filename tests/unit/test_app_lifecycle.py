"""The App's lifecycle: graceful drain, options as data, what it exports and serves."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

import stemd
from stemd._actors.api import ApiResponder
from stemd._broker.capabilities import HelperActors, QueueDepth
from stemd._broker.jetstream import JetStreamBroker
from stemd._broker.local import LocalBroker
from stemd._config import Config
from stemd._store.base import WorkflowInfo
from stemd._store.memory import MemoryStore
from tests.helpers import wait_until

pytestmark = pytest.mark.anyio


def _gated_flow(name: str) -> tuple[stemd.Flow, anyio.Event, anyio.Event]:
    """A flow whose one step signals ``entered`` and then waits for ``release``."""
    flow = stemd.Flow(name)
    entered, release = anyio.Event(), anyio.Event()

    @flow.step("work")
    async def work(ctx: stemd.FlowContext) -> str:
        entered.set()
        await release.wait()
        return "done"

    return flow, entered, release


async def _draining(app: stemd.App) -> bool:
    assert app.pool is not None
    return app.pool.statistics().draining


async def test_drain_lets_the_step_in_flight_commit_and_claims_no_new_run() -> None:
    """app.drain(): the step running finishes and its run is committed; a run started
    meanwhile is left pending, never claimed."""
    flow, entered, release = _gated_flow("drain.flow")
    async with stemd.App(workflows=[flow], concurrency=4) as app:
        first = await app.start_workflow(flow)
        await entered.wait()
        async with anyio.create_task_group() as tg:

            async def drain() -> None:
                assert await app.drain(grace=5.0) == 0

            tg.start_soon(drain)
            await wait_until(_draining, app, what="the pool to drain")
            second = await app.start_workflow(flow)
            release.set()
        done = await app.get_run(first)
        waiting = await app.get_run(second)
    assert done is not None
    assert done.status is stemd.RunStatus.COMPLETED
    assert done.checkpoints == {"work": "done"}
    assert waiting is not None
    assert waiting.status is stemd.RunStatus.PENDING
    assert waiting.attempts == 0
    assert waiting.lease_owner is None


async def test_closing_with_a_shutdown_grace_finishes_the_step_in_flight() -> None:
    """With options.timing.shutdown_grace, leaving the App waits for the step in flight,
    which commits."""
    flow, entered, release = _gated_flow("grace.flow")
    store = MemoryStore()
    options = stemd.AppOptions(timing=stemd.Timing(shutdown_grace=5.0))
    async with (
        anyio.create_task_group() as tg,
        stemd.App(store=store, workflows=[flow], options=options) as app,
    ):
        run_id = await app.start_workflow(flow)
        await entered.wait()

        async def release_once_draining() -> None:
            await wait_until(_draining, app, what="the pool to drain")
            release.set()

        tg.start_soon(release_once_draining)
    rec = await store.get_run(run_id)
    assert rec is not None
    assert rec.status is stemd.RunStatus.COMPLETED


async def test_a_drain_whose_grace_ends_releases_the_run_on_close() -> None:
    """A step still running when the grace ends is cancelled on close; its run is released
    (pending, no owner) to be re-run from that step."""
    flow, entered, _ = _gated_flow("short.flow")
    store = MemoryStore()
    async with stemd.App(store=store, workflows=[flow]) as app:
        run_id = await app.start_workflow(flow)
        await entered.wait()
        assert await app.drain(grace=0.01) == 1
    rec = await store.get_run(run_id)
    assert rec is not None
    assert rec.status is stemd.RunStatus.PENDING
    assert rec.lease_owner is None


async def test_drain_of_a_closed_app_is_an_error_and_a_client_has_nothing_to_drain() -> None:
    """drain() needs an open App; an App without workers drains at once."""
    app = stemd.App()
    with pytest.raises(stemd.StemError, match="not open"):
        await app.drain()
    async with stemd.App(workers=False) as client:
        assert await client.drain() == 0


def test_config_converts_to_the_app_options_by_field_name() -> None:
    """Config.app_options(): timing, restart, NATS, prefix, credentials and tracing come
    from the config keys of the same names; nats is the effective NATS URL."""
    restart = stemd.RestartPolicy(max_restarts=2, window=5.0)
    auth = stemd.NatsAuth(user="ana", password="pw")
    config = Config(
        store="nats://h:4222",
        broker="nats://h:4222",
        lease=3.0,
        sweep_interval=2.0,
        shutdown_grace=7.0,
        restart=restart,
        prefix="acme",
        nats_auth=auth,
        tracing=True,
    )
    assert config.app_options() == stemd.AppOptions(
        timing=stemd.Timing(lease=3.0, sweep_interval=2.0, shutdown_grace=7.0),
        restart=restart,
        nats="nats://h:4222",
        prefix="acme",
        nats_auth=auth,
        tracing=True,
    )
    # Every timing field is a config key: the conversion reads them by name.
    config_keys = set(Config.__struct_fields__)
    assert set(stemd.Timing.__struct_fields__) <= config_keys
    assert set(stemd.AppOptions.__struct_fields__) - {"timing", "owner"} <= config_keys


def test_the_in_process_broker_sweeps_every_second_by_default() -> None:
    """With no broker and no sweep_interval, the daemon's App sweeps every second (runs
    started by other processes are found so); with NATS it keeps the App's default."""
    assert Config().app_options().timing.sweep_interval == 1.0
    assert Config(broker="nats://h:1").app_options().timing.sweep_interval is None


def test_app_options_are_data() -> None:
    """AppOptions and its groups are frozen msgspec Structs that round-trip through JSON."""
    options = stemd.AppOptions(
        timing=stemd.Timing(lease=5.0), restart=stemd.RestartPolicy(backoff=0.5), owner="w1"
    )
    with pytest.raises(AttributeError):
        options.owner = "w2"  # type: ignore[misc]
    data = msgspec.json.encode(options)
    assert msgspec.json.decode(data, type=stemd.AppOptions) == options


def test_app_refuses_options_that_are_not_app_options() -> None:
    """App(options=...) takes an AppOptions, nothing else."""
    with pytest.raises(stemd.StemError, match="AppOptions"):
        stemd.App(options={"tracing": True})  # type: ignore[arg-type]


def test_the_types_of_the_app_signature_are_exported() -> None:
    """Every type App's signature uses is importable from stemd."""
    for name in (
        "AppOptions",
        "Timing",
        "RestartPolicy",
        "NatsAuth",
        "Clock",
        "Codec",
        "Store",
        "Broker",
        "Actor",
        "ActorFactory",
    ):
        assert name in stemd.__all__, name
    assert issubclass(stemd.RestartBudgetExceeded, stemd.StemError)


def test_broker_capabilities_are_named_protocols() -> None:
    """The in-process broker reports its queue depth; the JetStream one has helper actors."""
    assert isinstance(LocalBroker(), QueueDepth)
    assert not isinstance(LocalBroker(), HelperActors)
    js = JetStreamBroker("nats://127.0.0.1:4222")
    assert isinstance(js, HelperActors)
    assert not isinstance(js, QueueDepth)


class _Operations:
    """Operations on runs without an App: what the API responder needs."""

    async def get_run(self, run_id: str) -> stemd.RunState | None:
        return None

    async def registered_workflows(self) -> list[WorkflowInfo]:
        return [WorkflowInfo(name="w", kind="script")]

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the responder called {name}")


async def test_the_api_responder_serves_any_operations() -> None:
    """The API responder answers from the operations it is given, with no App."""
    # handle() does not touch the connection.
    responder = ApiResponder(_Operations(), conn=None)  # type: ignore[arg-type]
    missing = msgspec.json.decode(await responder.handle("get", b'{"run_id": "r1"}'))
    assert missing["error"]["code"] == "not_found"
    types = msgspec.json.decode(await responder.handle("types", b"{}"))
    assert types == {"workflows": [{"name": "w", "kind": "script", "version": None}]}
