"""The daemon's configuration: a TOML file decoded into a frozen :class:`Config`, then
``STEMD_*`` environment variables on top.

Every error is a :class:`~stemd._errors.ConfigError` whose message starts with the key (or
the environment variable) at fault::

    stemd.toml: concurrency: Expected `int >= 1`, got `0`
    STEMD_CONCURRENCY: expected an integer, got 'many'
    store: cannot reach nats://10.0.0.9:4222 (connection refused)
    nats_auth.creds_file: cannot read /etc/stemd/stemd.creds: No such file or directory

Credentials written into a URL (``nats://user:pass@host``) and the secrets of
``[nats_auth]`` never appear in these messages nor in :func:`config_to_toml`.

See docs/reference/config.md for every key.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec

from stemd._codec_options import CodecConfig, WorkflowCodecConfig, build_codecs
from stemd._errors import ConfigError
from stemd._identifiers import is_prefix, is_queue
from stemd._model import MAX_DURATION
from stemd._natsauth import NatsAuth, redact_url
from stemd._options import (
    AppOptions,
    LimitSettings,
    NonNegative,
    Positive,
    RestartPolicy,
    Timing,
)
from stemd._schedules import Schedule
from stemd._urls import is_loopback, is_nats, nats_servers, sqlite_path, store_kind

if TYPE_CHECKING:
    from collections.abc import Mapping

    from stemd._codec import Codec

__all__ = [
    "DEFAULT_HTTP_ADDRESS",
    "DEFAULT_STORE",
    "Config",
    "load_config",
]

DEFAULT_STORE = "sqlite:///./stemd.db"
DEFAULT_HTTP_ADDRESS = "127.0.0.1:8080"

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The effective configuration of a daemon (and of the CLI's ``--store`` mode).

    Attributes:
        modules: modules to import; every Flow, script and @stemd.workflow class at their
            top level is registered.
        app_dir: the directory put first on ``sys.path`` before anything is imported, so
            that the modules in it import (as uvicorn's ``--app-dir``); unset: the working
            directory the command starts in. ``stemd run --app-dir`` overrides it.
        entry_points: also load the modules named by installed ``stemd.workflows`` entry points.
        store: ``memory://``, ``sqlite:///PATH`` or ``nats://HOST:PORT``.
        broker: ``None`` for the in-process broker, or ``nats://HOST:PORT``.
        nats: where the API and run events are served; defaults to the broker's or the
            store's NATS URL (see :attr:`effective_nats`).
        prefix: the subject prefix of the API and run events (``stem.api.<verb>``).
        nats_auth: credentials and TLS for every NATS connection (``[nats_auth]``, see
            :class:`~stemd._natsauth.NatsAuth`).
        concurrency: runs executed at once by this daemon.
        queue: the queue this daemon's workers take runs from.
        lease: seconds a silent daemon keeps its runs before a peer takes them over
            (see :class:`~stemd._options.Timing`).
        sweep_interval: seconds between two sweeps for runnable runs nobody works on;
            unset: 1 with the in-process broker (runs started or resumed with ``--store``
            by another process are found this way), ``lease/2`` with a NATS broker.
        shutdown_grace: seconds in-flight slices get to finish on SIGTERM before they are
            cancelled and their runs released.
        event_retention: seconds an emitted event is kept for the runs that come to wait
            on its topic later (0: only the runs waiting when it is emitted get it).
        sqlite_synchronous: ``"full"`` (durability first: the store's default) or
            ``"normal"`` (faster; a power loss may lose the last commits, never corrupt the
            database). Overrides a ``?synchronous=`` in the store URL when set.
        log_level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``; SIGHUP re-reads it.
        log_format: ``auto`` (console on a TTY, JSON otherwise), ``json`` or ``console``.
        log_drivers: the level of the libraries' own loggers (aiosqlite, nats, asyncio);
            unset: ``warning``, or ``log_level`` when that is higher. SIGHUP re-reads it.
        http_address: ``HOST:PORT`` of the HTTP server (``/metrics``, ``/healthz``,
            ``/readyz``, the JSON API under ``/api/`` and the dashboard at ``/``); unset:
            ``127.0.0.1:8080``; ``""`` or ``"off"``: no HTTP server. An address that is
            not loopback needs ``http_tokens``.
        http_tokens: bearer tokens the API and the dashboard accept (none: no
            authentication, allowed on a loopback address only).
        metrics_address: the old name of ``http_address``, still read: an old config
            serves everything there. Not loopback and without ``http_tokens``, that
            address serves only ``/metrics``, ``/healthz`` and ``/readyz``, as before.
        event_loop: ``auto`` (uvloop when installed, else asyncio), ``asyncio`` or
            ``uvloop``.
        tracing: make OpenTelemetry spans (needs ``stemd[otel]``) with the global tracer
            provider, e.g. set up by ``opentelemetry-instrument stemd run``.
        actors: extra actors, each ``"module:factory"`` with ``factory(app) -> actor``.
        restart: the supervisor's restart budget.
        codec: how stored values are encoded, compressed and encrypted (``[codec]``).
        workflow_codecs: per-workflow overrides of ``codec`` (``[workflow_codecs."name"]``).
        schedules: workflows started on a cron schedule (``[[schedules]]``, each a
            :class:`~stemd._schedules.Schedule`: ``name``, ``workflow``, ``cron``,
            ``params``, ``overlap``, ``catch_up``, ``timezone``...).
        limits: per-workflow numbers of its :class:`~stemd.Limits` (``[limits."name"]``:
            ``concurrency``, ``key_concurrency``), in place of those declared in code.
    """

    modules: tuple[str, ...] = ()
    app_dir: str | None = None
    entry_points: bool = True
    store: str = DEFAULT_STORE
    broker: str | None = None
    nats: str | None = None
    prefix: str = "stem"
    nats_auth: NatsAuth = msgspec.field(default_factory=NatsAuth)
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 32
    queue: str = "workflow"
    lease: Positive = 4.0
    sweep_interval: Positive | None = None
    shutdown_grace: NonNegative = 30.0
    event_retention: Annotated[float, msgspec.Meta(ge=0, le=MAX_DURATION)] = 3600.0
    sqlite_synchronous: Literal["full", "normal"] | None = None
    log_level: LogLevel = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_drivers: LogLevel | None = None
    http_address: str | None = None
    http_tokens: tuple[Annotated[str, msgspec.Meta(min_length=16)], ...] = ()
    metrics_address: str | None = None
    tracing: bool = False
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    actors: tuple[str, ...] = ()
    restart: RestartPolicy = msgspec.field(default_factory=RestartPolicy)
    codec: CodecConfig = msgspec.field(default_factory=CodecConfig)
    workflow_codecs: dict[str, WorkflowCodecConfig] = msgspec.field(default_factory=dict)
    schedules: tuple[Schedule, ...] = ()
    limits: dict[str, LimitSettings] = msgspec.field(default_factory=dict)

    def build_codecs(self) -> tuple[Codec, dict[str, Codec]]:
        """The daemon's codec and the per-workflow ones.

        Raises:
            ConfigError: an unreadable or malformed key, a missing compression package.
        """
        return build_codecs(self.codec, self.workflow_codecs)

    @property
    def database(self) -> str | None:
        """The absolute path of the SQLite store's file, ``None`` for other stores. A
        relative path (``sqlite:///stemd.db``) is relative to the working directory: under
        systemd, the unit's state directory."""
        if not self.store.startswith("sqlite://"):
            return None
        return os.path.abspath(sqlite_path(self.store))

    @property
    def effective_nats(self) -> str | None:
        """``nats``, else the broker's URL or the store's when either is NATS, else ``None``."""
        if self.nats is not None:
            return self.nats
        for url in (self.broker, self.store):
            if is_nats(url):
                return url
        return None

    @property
    def http(self) -> tuple[str, str] | None:
        """Where the HTTP server listens and the key that says so (``http_address``, or
        ``metrics_address`` in an old config); ``None``: no HTTP server."""
        if self.http_address is not None:
            if self.http_address in ("", "off"):
                return None
            return self.http_address, "http_address"
        if self.metrics_address is not None:
            return self.metrics_address, "metrics_address"
        return DEFAULT_HTTP_ADDRESS, "http_address"

    @property
    def http_api(self) -> bool:
        """Whether the HTTP server serves the API and the dashboard: not when an old
        ``metrics_address`` that is not loopback has no ``http_tokens`` (only metrics and
        health there, as before)."""
        http = self.http
        if http is None:
            return False
        return bool(self.http_tokens) or is_loopback(_host_port(http[1], http[0])[0])

    @property
    def timing(self) -> Timing:
        """``lease``, ``sweep_interval`` and ``shutdown_grace``, as the App's :class:`Timing`.
        With the in-process broker and no ``sweep_interval``, sweeps are every second: runs
        started or resumed by another process (``stemd workflow … --store``) are only found
        by sweeping (a cheap indexed query); with NATS they reach the workers at once."""
        timing = msgspec.convert(self, Timing, from_attributes=True)
        if timing.sweep_interval is None and self.broker is None:
            timing = msgspec.structs.replace(timing, sweep_interval=1.0)
        return timing

    def app_options(self) -> AppOptions:
        """The App's options: msgspec reads each of their fields from the key of the same
        name (``timing`` from :attr:`timing`), and ``nats`` is :attr:`effective_nats`."""
        resolved = msgspec.structs.replace(self, nats=self.effective_nats)
        return msgspec.convert(resolved, AppOptions, from_attributes=True)


# -- environment ----------------------------------------------------------------------------

_LISTS = {"modules", "actors", "http_tokens"}
_ENV_PREFIX = "STEMD_"
# Variables that are not configuration keys (read elsewhere) and so not "unknown".
_ENV_OTHER = {"STEMD_CONFIG", "STEMD_HTTP_TOKEN"}  # STEMD_HTTP_TOKEN: the CLI's --http-token


def _env_name(key: str) -> str:
    return _ENV_PREFIX + key.upper()


def _field_types() -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(Config)}


# Tables whose fields ``STEMD_<PREFIX><FIELD>`` sets: STEMD_RESTART_WINDOW sets
# restart.window, STEMD_NATS_PASSWORD sets nats_auth.password.
_ENV_TABLES: dict[str, tuple[str, type[msgspec.Struct]]] = {
    "restart": ("restart_", RestartPolicy),
    "nats_auth": ("nats_", NatsAuth),
}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``STEMD_*`` variables as typed values; ``STEMD_RESTART_MAX_RESTARTS`` and the like
    set the fields of the ``restart`` table, ``STEMD_NATS_PASSWORD`` and the like those of
    ``nats_auth``."""
    types = _field_types()
    out: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for var, raw in environ.items():
        if not var.startswith(_ENV_PREFIX) or var in _ENV_OTHER:
            continue
        key = var[len(_ENV_PREFIX) :].lower()
        for table, (start, struct) in _ENV_TABLES.items():
            sub = key[len(start) :]
            sub_types = {f.name: f.type for f in msgspec.structs.fields(struct)}
            if key.startswith(start) and sub in sub_types:
                value = _env_value(var, raw, sub_types[sub], is_list=False)
                tables.setdefault(table, {})[sub] = value
                break
        else:
            if key in types and key not in _ENV_TABLES:
                out[key] = _env_value(var, raw, types[key], is_list=key in _LISTS)
            else:
                raise ConfigError(f"{var}: unknown setting (no config key {key!r})")
    out.update(tables)
    return out


def _env_value(var: str, raw: str, typ: Any, *, is_list: bool) -> Any:
    value: Any = raw
    if is_list:
        value = [part.strip() for part in raw.split(",") if part.strip()]
    elif raw == "" and _optional(typ):
        return None  # STEMD_BROKER= selects the in-process broker again
    try:
        return msgspec.convert(value, typ, strict=False)
    except msgspec.ValidationError as exc:
        expected = re.sub(r", got .*$", "", _plain(str(exc)))
        raise ConfigError(f"{var}: {expected}, got {raw!r}") from None


def _optional(typ: Any) -> bool:
    return "None" in repr(typ)


def _plain(message: str) -> str:
    """Msgspec's message without its ``- at `$...``` suffix, and lower-cased first letter."""
    message = re.sub(r" - at `\$[^`]*`$", "", message)
    return message[:1].lower() + message[1:]


# -- loading --------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    check_auth: bool = True,
) -> Config:
    """Read ``path`` (TOML; ``None`` for the defaults), apply ``STEMD_*`` overrides, validate.

    ``STEMD_CONFIG`` names the file when ``path`` is ``None``. ``check_auth=False`` leaves
    ``[nats_auth]`` unchecked, for a caller that completes it first (the CLI's flags) and
    then calls :meth:`NatsAuth.validate`.

    Raises:
        ConfigError: unreadable file, bad TOML, unknown key, wrong type or invalid value;
            the message names the key or variable.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get("STEMD_CONFIG"):
        path = env["STEMD_CONFIG"]
    data: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the config file: {exc.strerror}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_key_message(str(exc))}") from None
    overrides = _env_overrides(env)
    if overrides:
        for table in _ENV_TABLES:
            fields = overrides.pop(table, None)
            if fields is not None:
                overrides[table] = msgspec.structs.replace(getattr(config, table), **fields)
        config = msgspec.structs.replace(config, **overrides)
    _check_values(config)
    if check_auth:
        config.nats_auth.validate()
    return config


def _key_message(message: str) -> str:
    """Turn msgspec's message into ``key: what is wrong``."""
    unknown = re.match(r"Object contains unknown field `([^`]*)`(?: - at `\$\.?([^`]*)`)?", message)
    if unknown:
        key = f"{unknown.group(2)}.{unknown.group(1)}" if unknown.group(2) else unknown.group(1)
        return f"{key}: unknown key"
    at = re.search(r" - at `\$\.?([^`]*)`$", message)
    if at:
        key = re.sub(r"\[(\d+)\]", r"[\1]", at.group(1))
        return f"{key}: {_plain(message)}"
    return _plain(message)


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _check_values(config: Config) -> None:
    """Checks beyond types: URL schemes, names that end up in NATS subjects."""
    for i, module in enumerate(config.modules):
        if not _MODULE.fullmatch(module):
            raise ConfigError(f"modules[{i}]: {module!r} is not a module name")
    for i, actor in enumerate(config.actors):
        mod, _, attr = actor.partition(":")
        if not _MODULE.fullmatch(mod) or not _MODULE.fullmatch(attr):
            raise ConfigError(f"actors[{i}]: {actor!r} is not of the form 'module:factory'")
    _check_urls(config)
    if not is_queue(config.queue):
        raise ConfigError(f"queue: {config.queue!r} must be 1-64 letters, digits, '-' or '_'")
    if not is_prefix(config.prefix):
        raise ConfigError(f"prefix: {config.prefix!r} is not a valid subject prefix")
    _check_http(config)


def _check_http(config: Config) -> None:
    """``http_address`` (or ``metrics_address``) is ``HOST:PORT``, the two are not both
    set, and an address that is not loopback has tokens."""
    if config.metrics_address is not None:
        _host_port("metrics_address", config.metrics_address)
        if config.http_address is not None:
            raise ConfigError(
                "metrics_address: the old name of http_address; set only http_address"
            )
    http = config.http
    if http is None:
        return
    address, key = http
    host, _ = _host_port(key, address)
    if key == "http_address" and not config.http_tokens and not is_loopback(host):
        raise ConfigError(
            f"http_address {address}: not a loopback address, so http_tokens must be set "
            "(anyone who reaches it could start and cancel runs)"
        )


def _check_urls(config: Config) -> None:
    """The store, broker and NATS URLs have a scheme stemd knows and name a file or servers."""
    store = config.store
    kind = store_kind(store)
    if kind == "sqlite" and (not store.startswith("sqlite:///") or not sqlite_path(store)):
        raise ConfigError(f"store: {store!r} names no file (use sqlite:///PATH)")
    for key in ("broker", "nats"):
        url = getattr(config, key)
        if url is not None and not is_nats(url):
            raise ConfigError(f"{key}: unsupported URL {redact_url(url)!r} (use nats://HOST:PORT)")
        if url is not None:
            nats_servers(key, url)
    if kind == "nats":
        nats_servers("store", store)


def _host_port(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT")
    return host, int(port)
