"""Options as data: the App's settings, grouped in frozen structs (as httpx's ``Timeout``
and ``Limits``), and the options of a store or broker, given as a URL's query or as
keywords.

The daemon's :class:`~stemd._config.Config` converts to :class:`AppOptions` with msgspec
(:meth:`~stemd._config.Config.app_options`): a field here reads the config key of the same
name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from stemd._errors import ConfigError
from stemd._model import MAX_DURATION
from stemd._natsauth import NatsAuth
from stemd._schedules import Schedule

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "DEFAULT_EVENT_RETENTION",
    "AppOptions",
    "NonNegative",
    "Positive",
    "RestartPolicy",
    "Timing",
    "as_bool",
    "convert_options",
    "keep",
]

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
#: Seconds an emitted event is kept for runs that wait on its topic later (one hour).
DEFAULT_EVENT_RETENTION = 3600.0


class Timing(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How an App paces its background work, in seconds.

    Attributes:
        lease: how long a process that executes runs (an App with workers, a daemon) may
            go silent before its runs are taken over: its session is renewed every
            ``lease/4`` seconds, and a peer that sees it unchanged for ``lease`` seconds of
            its own monotonic clock takes its runs over (a process on the same host whose
            lock file is free is known dead at once). With a store of the user's (no
            sessions), the lease of each run, renewed every ``lease/3`` seconds.
        sweep_interval: between two sweeps for runnable runs nobody works on (``None``:
            ``lease / 2``).
        shutdown_grace: how long the slices in flight get to finish and commit when the
            App closes (see :meth:`stemd.App.drain`); ``0``: they are cancelled at once
            and their runs released, to be re-run from the interrupted step.
    """

    lease: Positive = 4.0
    sweep_interval: Positive | None = None
    shutdown_grace: NonNegative = 0.0


class RestartPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The supervisor's restart budget: at most ``max_restarts`` crashes of one actor within
    ``window`` seconds, restarted ``backoff`` seconds apart (doubling up to ``max_backoff``).
    One more crash in the window stops the App with
    :class:`~stemd._errors.RestartBudgetExceeded` (the daemon exits non-zero)."""

    max_restarts: Annotated[int, msgspec.Meta(ge=0)] = 5
    window: Positive = 60.0
    backoff: NonNegative = 0.1
    max_backoff: NonNegative = 5.0


class LimitSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The numbers of a workflow's :class:`~stemd.Limits` set by configuration, in place
    of those declared on the workflow (a key function is code: declared only there)."""

    concurrency: Annotated[int, msgspec.Meta(ge=1)] | None = None
    key_concurrency: Annotated[int, msgspec.Meta(ge=1)] | None = None
    rate: Annotated[int, msgspec.Meta(ge=1)] | None = None
    key_rate: Annotated[int, msgspec.Meta(ge=1)] | None = None
    per: Annotated[float, msgspec.Meta(gt=0, le=86_400)] | None = None
    dedup_window: Annotated[float, msgspec.Meta(gt=0, le=MAX_DURATION)] | None = None


class AppOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The settings of an :class:`~stemd.App` beyond its store, broker, workflows, workers,
    concurrency and queue.

    Attributes:
        timing: lease, sweep interval and shutdown grace (:class:`Timing`).
        restart: the supervisor's restart budget (:class:`RestartPolicy`).
        nats: ``"nats://HOST:PORT"`` to serve the wire protocol there: the
            ``<prefix>.api.*`` responder, durable submission on ``<prefix>.submit.>`` and
            run events on ``<prefix>.events.run.<run_id>``; ``None``: not served.
        prefix: the subject prefix of the wire protocol.
        nats_auth: credentials and TLS for every NATS connection the App opens: a NATS
            store or broker given as a URL, and ``nats``.
        tracing: make OpenTelemetry spans with the global tracer provider (needs the
            ``otel`` extra); see :mod:`stemd._tracing`.
        owner: the name this App's workers hold leases under (default:
            ``host:pid:random``); two live Apps must never share one.
        event_retention: seconds an emitted event is kept for the runs that come to wait
            on its topic later (default one hour; 0: an event reaches only the runs
            waiting when it is emitted). Each kept event costs its payload's bytes in the
            store for that long; see docs/howto/correlating-events.md.
        schedules: the :class:`~stemd._schedules.Schedule` s this App's workers start
            (with those given as ``App(schedules=...)``).
        limits: per workflow name, the numbers of its :class:`~stemd.Limits`
            (:class:`LimitSettings`), in place of those declared on the workflow.
    """

    timing: Timing = msgspec.field(default_factory=Timing)
    restart: RestartPolicy = msgspec.field(default_factory=RestartPolicy)
    nats: str | None = None
    prefix: str = "stem"
    nats_auth: NatsAuth | None = None
    tracing: bool = False
    owner: str | None = None
    event_retention: Annotated[float, msgspec.Meta(ge=0, le=MAX_DURATION)] = DEFAULT_EVENT_RETENTION
    schedules: tuple[Schedule, ...] = ()
    limits: dict[str, LimitSettings] = msgspec.field(default_factory=dict)


# -- options of a store or broker URL --------------------------------------------------------


def as_bool(value: Any) -> bool:
    """``True``, or a string such as ``1``, ``true``, ``yes``, ``on``."""
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "yes", "on")


def keep(value: Any) -> Any:
    """An option passed through as it is (an object given as a keyword)."""
    return value


def convert_options(
    options: Mapping[str, Any],
    kinds: Mapping[str, Callable[[Any], Any]],
    *,
    what: str,
    where: str = "",
) -> dict[str, Any]:
    """Each option converted by its kind (``int``, ``float``, ``str``, :func:`as_bool`...).

    Raises:
        ConfigError: an unknown option or a value its kind refuses, naming ``what`` (the
            config key) and ``where`` (e.g. the redacted URL).
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        kind = kinds.get(key)
        if kind is None:
            raise ConfigError(f"{what}: unknown option {key!r}{where}")
        try:
            out[key] = kind(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{what}: bad value for option {key!r}{where}: {exc}") from None
    return out
