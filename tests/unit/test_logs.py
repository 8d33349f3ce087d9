"""Logging levels: stemd's lines at ``level``, the drivers' (aiosqlite, nats, asyncio) at
their own level, ``warning`` unless asked for."""

from __future__ import annotations

import io
import json
import logging
import sys
import tempfile
import threading
from typing import TYPE_CHECKING

import pytest
import structlog

from stemd._logs import DRIVERS, configure_logging, set_level

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put structlog, the root logger and the drivers' loggers back after each test."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    drivers = {name: logging.getLogger(name).level for name in DRIVERS}
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, driver_level in drivers.items():
        logging.getLogger(name).setLevel(driver_level)


def _lines(level: str, drivers: str | None) -> list[str]:
    out = io.StringIO()
    configure_logging(level, "json", out, drivers=drivers)
    structlog.get_logger("stemd.test").debug("stemd debug")
    logging.getLogger("aiosqlite").debug("executing PRAGMA")
    logging.getLogger("nats.aio.client").info("nats info")
    logging.getLogger("asyncio").warning("asyncio warning")
    return out.getvalue().splitlines()


def test_debug_shows_stemd_not_the_drivers() -> None:
    """At debug, stemd's debug lines show; the drivers' only from warning up."""
    text = "\n".join(_lines("debug", None))
    assert "stemd debug" in text
    assert "executing PRAGMA" not in text
    assert "nats info" not in text
    assert "asyncio warning" in text


def test_drivers_level_is_its_own() -> None:
    """drivers="debug" shows the drivers' debug lines, whatever stemd's level."""
    text = "\n".join(_lines("info", "debug"))
    assert "stemd debug" not in text
    assert "executing PRAGMA" in text
    assert "nats info" in text


def test_drivers_follow_a_higher_level() -> None:
    """With no drivers level, a stemd level above warning quiets the drivers as well."""
    text = "\n".join(_lines("error", None))
    assert "asyncio warning" not in text


def test_set_level_changes_both_now() -> None:
    """set_level (SIGHUP) applies a new level to stemd's loggers and to the drivers'."""
    configure_logging("info", "json", io.StringIO())
    assert logging.getLogger("aiosqlite").getEffectiveLevel() == logging.WARNING
    set_level("debug", "debug")
    assert logging.getLogger("aiosqlite").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("stemd.anything").getEffectiveLevel() == logging.DEBUG
    set_level("info")
    assert logging.getLogger("aiosqlite").getEffectiveLevel() == logging.WARNING


def test_lines_from_two_threads_never_run_into_each_other() -> None:
    """The lines of stemd (structlog, the loop's thread) and of a driver (the stdlib, its
    own thread: aiosqlite's) written at once into one stream: every line is one whole JSON
    record (a line was written without its newline before, and the other thread's came
    in between: seen in a daemon's output at shutdown). Thread switches are made as
    frequent as they go, so that the two writes meet."""
    with tempfile.TemporaryFile("w+") as out:
        configure_logging("debug", "json", out, drivers="debug")
        driver = logging.getLogger("aiosqlite")
        count = 20_000

        def write_from_a_thread() -> None:
            for i in range(count):
                driver.debug("from a thread %d", i)

        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            thread = threading.Thread(target=write_from_a_thread)
            thread.start()
            log = structlog.get_logger("stemd.test")
            for i in range(count):
                log.info("from the loop", i=i)
            thread.join()
        finally:
            sys.setswitchinterval(interval)
        out.seek(0)
        records = [json.loads(line) for line in out.read().splitlines()]
    assert len(records) == 2 * count
