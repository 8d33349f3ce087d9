"""Collects the code blocks of README.md and docs/**/*.md as tests (see tests/docs.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.docs import DOCS, is_doc

_collect_docs = DOCS.pytest()


def pytest_collect_file(file_path: Path, parent: Any) -> Any:
    """README.md and the pages under docs/: one test per code block, in page order."""
    if is_doc(file_path):
        return _collect_docs(file_path, parent)
    return None
