"""``stemd run``: config → workflows → App → run until SIGTERM or SIGINT.

Lifecycle:

1. Read the config (file and ``STEMD_*``), import the workflows (config ``modules`` and
   ``stemd.workflows`` entry points), read the encryption key files, bind
   ``http_address``, check every URL is reachable. Anything wrong stops the daemon
   here, before ``READY=1``, with exit status 1 and one line naming the setting; but a
   NATS URL that no server answers on is waited for, degraded (:mod:`stemd._startwait`).
2. Open the App with the built-in actors, the configured extra actors, the HTTP
   server (metrics, health, API, dashboard, on the socket bound in 1) and, last, the
   systemd notify actor, which says ``READY=1`` once all the others have started.
3. SIGHUP re-reads the config file and applies ``log_level`` and ``log_drivers``; other
   keys need a restart.
4. SIGTERM or SIGINT: ``STOPPING=1``; stop taking work; slices in flight get
   ``shutdown_grace`` seconds to finish (a second signal cuts the grace short); then the
   remaining ones are cancelled and their runs released (the next daemon re-runs only the
   step that was interrupted); the store is closed; exit status 0.
5. An actor crashing past the restart budget stops the daemon with exit status 70.
6. A dependency going away (the store, NATS, the disk under SQLite) is not a crash: the
   daemon is degraded (``STATUS=degraded (...)``, ``/readyz`` 503, ``stemd_degraded``),
   takes no work, retries with backoff, and resumes by itself when it is back.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from stemd._actors.http import listen
from stemd._actors.notify import Notifier, SystemdNotify
from stemd._app import ActorFactory, App
from stemd._config import Config, load_config
from stemd._errors import ConfigError, RestartBudgetExceeded, StemError
from stemd._health import outage_of
from stemd._loading import Workflow, import_object, load_workflows, use_app_dir
from stemd._logs import configure_logging, set_level
from stemd._natsauth import redact_url
from stemd._runlog import RunLog
from stemd._startwait import StartWait
from stemd._store import store_from_url
from stemd._urls import store_kind

if TYPE_CHECKING:
    from stemd._actors.supervisor import Actor
    from stemd._store.base import Store

__all__ = ["EXIT_CRASHED", "Daemon", "check_health", "main"]

log = structlog.get_logger("stemd.daemon")

EXIT_CRASHED = 70  # EX_SOFTWARE: an actor crashed past its restart budget


async def check_health(app: App) -> tuple[bool, str]:
    """Whether the daemon is alive and should be left running: its event loop runs (we
    are here) and its worker pool exists. A dependency away is not ill health: the
    daemon is then degraded (``app.health``), keeps pinging the watchdog and recovers by
    itself; the second item says so."""
    if app.workers and app.pool is None:
        return False, "no worker pool"
    return True, app.health.state().describe()


def _store(config: Config) -> Store:
    options: dict[str, object] = {}
    kind = store_kind(config.store)
    if kind == "sqlite" and config.sqlite_synchronous is not None:
        options["synchronous"] = config.sqlite_synchronous
    if kind == "nats":
        options["auth"] = config.nats_auth
    return store_from_url(config.store, **options)


class Daemon:
    """One ``stemd run``: owns the App, the signals and the conversation with systemd.

    Args:
        config: the effective configuration.
        workflows: what to register.
        config_path: the file SIGHUP re-reads (``None``: SIGHUP only logs).
        notifier: defaults to the one ``$NOTIFY_SOCKET`` names.
        overrides: config keys set on the command line (``-v``: ``log_level``), kept
            over what SIGHUP re-reads.
    """

    def __init__(
        self,
        config: Config,
        workflows: list[Workflow],
        *,
        config_path: str | None = None,
        notifier: Notifier | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.config = msgspec.structs.replace(config, **self.overrides)
        self.workflows = workflows
        self.config_path = config_path
        self.notifier = notifier or Notifier.from_environ()
        self.app: App | None = None
        self._health_ok = True  # the last watchdog health check, for /healthz
        self._listener: Any = None  # http_address, bound before the App starts
        self._start: StartWait | None = None  # the wait for NATS before the App opens

    # -- pieces ---------------------------------------------------------------------------

    def _status(self) -> str:
        app = self.app
        if app is None or app.pool is None:
            return "starting"
        stats = app.pool.statistics()
        restarts = sum(app.supervisor.statistics().restarts.values()) if app.supervisor else 0
        health = app.health.state()
        return (
            f"{'running' if health.ready else health.describe()}: "
            f"{stats.busy}/{stats.concurrency} busy, {stats.slices} slices, "
            f"{len(self.workflows)} workflows, {restarts} restarts"
        )

    async def _healthy(self) -> tuple[bool, str]:
        if self.app is None:
            return False, "not started"
        ok, why = await check_health(self.app)
        self._health_ok = ok
        return ok, why

    def _actor_factories(self) -> list[ActorFactory]:
        factories: list[ActorFactory] = [RunLog]
        factories += [
            import_object(f"actors[{i}]", spec) for i, spec in enumerate(self.config.actors)
        ]
        if self.config.http is not None:
            factories.append(self._http_endpoint)
        # Last: the supervisor starts actors in order, so READY=1 means all have started.
        factories.append(
            lambda app: SystemdNotify(self.notifier, healthy=self._healthy, status=self._status)
        )
        return factories

    def _http_endpoint(self, app: App) -> Actor:
        from stemd._actors.http import HttpEndpoint
        from stemd._observe import install_metrics
        from stemd._urls import is_loopback
        from stemd._web import Web
        from stemd._web.listing import RunLister

        assert self.config.http is not None
        address, _ = self.config.http

        async def healthy() -> tuple[bool, str]:
            if app.workers and app.pool is None:
                return False, "no worker pool"
            return (True, "ok") if self._health_ok else (False, "the last health check failed")

        async def ready() -> tuple[bool, str]:
            return await check_health(app)

        if not self.config.http_api:
            log.warning(
                "metrics_address is not loopback and there are no http_tokens: serving "
                "metrics and health only (set http_address and http_tokens for the API)",
                address=address,
            )
        web = Web(
            app,
            health=app.health.state,
            observers=app.engine.observers,
            registry=install_metrics(app),
            healthy=healthy,
            ready=ready,
            tokens=self.config.http_tokens,
            loopback=is_loopback(address.rpartition(":")[0].strip("[]") or "127.0.0.1"),
            api=self.config.http_api,
            lister=RunLister(app.store, app.codec),
        )
        return HttpEndpoint(web.asgi, address, listener=self._listener, on_stop=web.close)

    def _reload(self) -> None:
        """SIGHUP: re-read the config file; apply ``log_level`` and ``log_drivers``, report
        what needs a restart."""
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload failed; keeping the running configuration", error=str(exc))
            return
        new = msgspec.structs.replace(new, **self.overrides)
        set_level(new.log_level, new.log_drivers)
        live = ("log_level", "log_drivers")
        old = msgspec.structs.asdict(self.config)
        changed = sorted(
            k for k, v in msgspec.structs.asdict(new).items() if k not in live and old[k] != v
        )
        log.info(
            "reloaded",
            log_level=new.log_level,
            log_drivers=new.log_drivers,
            needs_restart=changed or None,
        )
        self.config = msgspec.structs.replace(
            self.config, log_level=new.log_level, log_drivers=new.log_drivers
        )

    # -- running --------------------------------------------------------------------------

    async def serve(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit status.

        Raises:
            ConfigError: found before anything starts (so before ``READY=1``): a key file
                that cannot be read, ``http_address`` in use or not resolvable, a URL
                that is invalid or refuses the credentials (a NATS URL nobody answers on
                is waited for).
        """
        config = self.config
        codecs = config.build_codecs()  # reads the encryption key files
        if config.http is not None:
            # Bound here and handed to the endpoint: a port in use is an error at start,
            # not an actor crashing until the restart budget runs out.
            self._listener = await listen(*config.http)
        # NATS unreachable: wait for it, degraded (READY=1, /readyz 503), not exit.
        self._start = StartWait(
            config, self.notifier, listener=self._listener, on_hangup=self._reload
        )
        away: BaseException | None = None
        try:
            while True:
                if not await self._start.until_reachable(away):  # SIGTERM or SIGINT
                    log.info("stopped")
                    self.notifier.close()
                    return 0
                try:
                    return await self._serve(codecs)
                except StemError as exc:
                    # NATS takes connections but the App cannot open yet: wait again.
                    if self._start.is_open or outage_of(exc) != "nats":
                        raise
                    away = exc
        finally:
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.close()

    async def _serve(self, codecs: tuple[Any, dict[str, Any]]) -> int:
        config = self.config
        codec, workflow_codecs = codecs
        app = App(
            store=_store(config),
            broker=config.broker,
            workflows=self.workflows,
            concurrency=config.concurrency,
            queue=config.queue,
            options=config.app_options(),
            codec=codec,
            workflow_codecs=workflow_codecs,
            actors=self._actor_factories(),
        )
        # Every change between ready and degraded is told to systemd at once.
        app.health.subscribe(lambda _: self.notifier.send(f"STATUS={self._status()}"))
        crashed: list[BaseException] = []
        stops = (signal.SIGTERM, signal.SIGINT)
        with anyio.open_signal_receiver(*stops, signal.SIGHUP) as signals:
            try:
                self.app = app
                async with app:
                    if self._start is not None:
                        self._start.opened()
                    log.info(
                        "started",
                        store=redact_url(config.store),
                        database=config.database,
                        broker=redact_url(config.broker or "in-process"),
                        nats=config.effective_nats and redact_url(config.effective_nats),
                        workflows=sorted(app.workflows),
                        concurrency=config.concurrency,
                        pid=os.getpid(),
                    )
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            self._reload()
                            continue
                        log.info("stopping", signal=signal.Signals(signum).name)
                        break
                    await self._drain(app, signals)
            except* RestartBudgetExceeded as group:
                crashed.extend(group.exceptions)
            finally:
                self.app = None
        if crashed:
            log.error("stopped: an actor crashed past its restart budget", error=str(crashed[0]))
            self.notifier.send("STOPPING=1", f"STATUS=crashed: {crashed[0]}")
            self.notifier.close()
            return EXIT_CRASHED
        log.info("stopped")
        self.notifier.close()
        return 0

    async def _drain(self, app: App, signals: Any) -> None:
        """Stop taking work and give the slices in flight ``shutdown_grace`` to finish
        (:meth:`App.drain`); a second SIGTERM or SIGINT cuts the grace short."""
        grace = self.config.shutdown_grace
        self.notifier.send(
            "STOPPING=1",
            f"STATUS=stopping: finishing in-flight runs (up to {grace:g}s)",
            f"EXTEND_TIMEOUT_USEC={int((grace + 10) * 1_000_000)}",
        )
        busy = 0
        cut_short = False
        async with anyio.create_task_group() as tg:

            async def second_signal() -> None:
                nonlocal cut_short
                async for signum in signals:
                    if signum != signal.SIGHUP:
                        log.warning("second signal: not waiting for in-flight runs")
                        cut_short = True
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(second_signal)
            busy = await app.drain(grace)
            tg.cancel_scope.cancel()
        if cut_short and app.pool is not None:
            busy = app.pool.statistics().busy
        if busy:
            log.warning("grace period over; releasing the runs in flight", in_flight=busy)


def loop_options(event_loop: str) -> dict[str, Any]:
    """Anyio's backend options for ``event_loop``: uvloop when asked for, or when ``auto``
    and uvloop is installed (it cuts the daemon's CPU per workflow by 10-20 %)."""
    if event_loop == "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if event_loop == "uvloop":
            raise ConfigError(
                "event_loop: uvloop is not installed (pip install 'stemd[fast]')"
            ) from None
        return {}
    return {"use_uvloop": True}


def main(
    config_path: str | None = None,
    app_dir: str | None = None,
    *,
    verbose: bool = False,
    log_drivers: str | None = None,
) -> int:
    """``stemd run``: load everything, serve, return the exit status. The modules of
    ``app_dir`` (else the config's ``app_dir``, else the working directory) import.

    Args:
        config_path: the TOML config (``None``: ``$STEMD_CONFIG``, else the defaults).
        app_dir: where the workflow modules are imported from (``stemd run --app-dir``).
        verbose: log at ``debug`` whatever ``log_level`` says (``stemd -v run``).
        log_drivers: overrides the config's ``log_drivers`` (``--log-drivers``).

    Raises:
        StemError: the configuration is invalid, names a file that cannot be read or an
            address that cannot be bound or reached, or the store cannot be opened (the
            CLI prints it as one line, and exits 1).
    """
    overrides: dict[str, Any] = {}
    if verbose:
        overrides["log_level"] = "debug"
    if log_drivers is not None:
        overrides["log_drivers"] = log_drivers
    config = msgspec.structs.replace(load_config(config_path), **overrides)
    configure_logging(config.log_level, config.log_format, drivers=config.log_drivers)
    use_app_dir(app_dir or config.app_dir, key="--app-dir" if app_dir else "app_dir")
    workflows, sources = load_workflows(config.modules, use_entry_points=config.entry_points)
    if not workflows:
        log.warning("no workflows registered", sources=sources)
    else:
        log.info("workflows loaded", workflows=[w.name for w in workflows], sources=sources)
    daemon = Daemon(
        config,
        workflows,
        config_path=config_path or os.environ.get("STEMD_CONFIG"),
        overrides=overrides,
    )
    try:
        return anyio.run(daemon.serve, backend_options=loop_options(config.event_loop))
    except StemError:
        raise
    except OSError as exc:
        raise StemError(f"cannot start: {exc}") from None
