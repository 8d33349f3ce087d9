"""Fixtures for the CLI tests: a SQLite store in tmp_path, and logging put back after each
command (the CLI configures logging for its process)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo the CLI's logging configuration so that later tests see the defaults."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def store(tmp_path: Path) -> str:
    """The URL of a SQLite store in a fresh file."""
    return f"sqlite:///{tmp_path / 'stemd.db'}"
