"""Fixtures shared by every test: the anyio backend and the store under test."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pytest
import structlog

from tests.integration.daemon_proc import NotifyListener
from tests.stores import STORE_FACTORIES, StoreFactory

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from stemd._store.base import Store


def pytest_configure(config: pytest.Config) -> None:
    """Tests log through structlog's defaults, but with plain tracebacks: whether or not
    rich is installed, an error log must not render every local of every frame (seconds
    per error, and gigabytes over a property test)."""
    structlog.configure(
        processors=[
            *structlog.get_config()["processors"][:-1],
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    )


@pytest.fixture
def anyio_backend() -> str:
    """Stemd runs on anyio's asyncio backend (nats-py and aiosqlite are asyncio libraries)."""
    return "asyncio"


@pytest.fixture(params=sorted(STORE_FACTORIES), ids=sorted(STORE_FACTORIES))
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    """The factory of one kind of store (``memory``, and whatever tests/stores.py lists)."""
    return STORE_FACTORIES[request.param]


@pytest.fixture
async def store(store_factory: StoreFactory, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store of the kind under test, closed after the test."""
    async with store_factory(tmp_path) as opened:
        yield opened


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo the logging configuration that in-process `stemd` commands make, so that later
    tests see the defaults (modules use it as ``pytest.mark.usefixtures``)."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def default_logging() -> Iterator[None]:
    """The structlog defaults for the test (every level passes, so that ``capture_logs``
    sees every event whatever an earlier in-process command configured), then the
    configuration as it was."""
    config = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**config)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    """A notify socket standing in for systemd."""
    listener = NotifyListener(tmp_path)
    yield listener
    listener.close()
