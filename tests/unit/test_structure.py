"""The shape of the code base: modules stay small, functions stay simple, imports have no cycle.

Layer rules are import-linter contracts in pyproject.toml, checked by CI's ``lint-imports``.
"""

from __future__ import annotations

from pathlib import Path

import grimp
from radon.complexity import cc_visit

PACKAGE = Path(__file__).resolve().parents[2] / "stemd"
MAX_LINES = 500
MAX_COMPLEXITY = 15


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_500_lines() -> None:
    """Past 500 lines a module is split by role."""
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in _modules()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_function_is_over_cyclomatic_complexity_15() -> None:
    """No function or method has a cyclomatic complexity (radon) above 15."""
    complex_ = {}
    for path in _modules():
        for block in cc_visit(path.read_text(encoding="utf-8")):
            for item in [block, *getattr(block, "methods", [])]:
                if item.complexity > MAX_COMPLEXITY:
                    complex_[f"{path.relative_to(PACKAGE)}:{item.name}"] = item.complexity
    assert complex_ == {}


def test_the_package_has_no_import_cycle() -> None:
    """No two modules of stemd import each other, directly or through others (imports
    made only for type checking included)."""
    graph = grimp.build_graph("stemd")
    cycles = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported != "stemd" and graph.find_shortest_chain(
                importer=imported, imported=module
            ):
                cycles.add(tuple(sorted((module, imported))))
    assert sorted(cycles) == []
