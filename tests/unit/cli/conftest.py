"""Fixtures for the CLI tests: a SQLite store in tmp_path where a daemon has registered the
example workflows, and logging put back after each command (the CLI configures logging
for its process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from stemd_examples import approvals, fanout, flaky, signup, square

import stemd

if TYPE_CHECKING:
    from pathlib import Path

EXAMPLES = [approvals, fanout, flaky, signup, square]


def register(store: str) -> None:
    """Do what a daemon serving the examples does at start: record them in ``store``."""

    async def main() -> None:
        async with stemd.App(store=store, workflows=EXAMPLES):
            pass

    anyio.run(main)


@pytest.fixture
def store(tmp_path: Path) -> str:
    """The URL of a fresh SQLite store where a daemon serving the examples has run."""
    url = f"sqlite:///{tmp_path / 'stemd.db'}"
    register(url)
    return url


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging: None) -> None:
    """Every CLI test undoes the CLI's logging configuration (tests/conftest.py)."""
