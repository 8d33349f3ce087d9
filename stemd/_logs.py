"""Logging: structlog, JSON lines by default, console rendering on a TTY.

Lines logged while a run executes carry ``run_id``, ``workflow`` and ``step``, read from
the execution's context variable (so neither the engine nor user code has to bind them),
and so do stdlib ``logging`` records (nats-py's, or a user's).

The libraries stemd drives (aiosqlite, nats-py, asyncio) log through the stdlib at their
own level, ``drivers``: ``warning`` unless asked for, so that ``log_level = "debug"`` (or
``-v``) shows stemd's debug lines, not one line per SQLite statement.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

import structlog

from stemd._engine import execution

if TYPE_CHECKING:
    from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["DRIVERS", "add_run_context", "configure_logging", "set_level"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The stdlib loggers of the libraries stemd drives: at ``drivers`` level, not ``level``.
DRIVERS = ("aiosqlite", "nats", "asyncio")


def add_run_context(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Add ``run_id``, ``workflow`` and ``step`` of the run executing in this task, if any."""
    current = execution.current_run()
    if current is not None:
        run_id, workflow, step = current
        event_dict.setdefault("run_id", run_id)
        event_dict.setdefault("workflow", workflow)
        if step:
            event_dict.setdefault("step", step)
    return event_dict


def _shared() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_run_context,
    ]


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    drivers: str | None = None,
) -> None:
    """Configure structlog and the stdlib root logger.

    Args:
        level: ``debug`` … ``critical``: stemd's lines and the stdlib's (a user's).
        fmt: ``json``, ``console``, or ``auto`` (console when ``stream`` is a TTY).
        stream: where lines go (standard output by default).
        drivers: the level of the :data:`DRIVERS` loggers; ``None``: ``warning``, or
            ``level`` when that is higher.
    """
    out = stream if stream is not None else sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Processor
    if console:
        # Plain tracebacks: with rich installed, structlog's default renders every local
        # variable of every frame (a run's whole record), which takes seconds per error.
        renderer = structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer()
    exc_info: list[Processor] = [] if console else [structlog.processors.format_exc_info]
    structlog.configure(
        processors=[*_shared(), structlog.processors.StackInfoRenderer(), *exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        # One write per line (line and newline), as the stdlib handler's: print() writes
        # them apart, and a driver's line from another thread could come in between.
        logger_factory=structlog.WriteLoggerFactory(out),
        # Not cached: SIGHUP changes the level of loggers that already exist.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *exc_info,
                renderer,
            ],
            foreign_pre_chain=[*_shared(), structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level, drivers)


def set_level(level: str, drivers: str | None = None) -> None:
    """Change the level of every logger now: structlog's and the stdlib's to ``level``,
    the :data:`DRIVERS` ones to ``drivers`` (``None``: ``warning``, or ``level`` when
    that is higher)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]))
    logging.getLogger().setLevel(_LEVELS[level])
    driver_level = _LEVELS[drivers] if drivers is not None else max(_LEVELS[level], logging.WARNING)
    for name in DRIVERS:
        logging.getLogger(name).setLevel(driver_level)
