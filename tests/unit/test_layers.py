"""Inner layers know nothing of outer ones: the import graph (imports under TYPE_CHECKING
included), as grimp builds it."""

from __future__ import annotations

import grimp
import pytest

# The modules that must take part in no import cycle.
ACYCLIC = (
    "stemd._authoring",
    "stemd._engine",
    "stemd._actors.timer",
    "stemd._actors.sweeper",
    "stemd._actors.workers",
    "stemd._tracing",
    "stemd._observe",
)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """The graph of stemd's internal imports."""
    return grimp.build_graph("stemd", include_external_packages=False)


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_authoring_imports_nothing_of_the_engine_or_outer_layers(
    graph: grimp.ImportGraph,
) -> None:
    """stemd._authoring imports (directly or not) only the data model, its identifier
    patterns and the errors."""
    imported = graph.find_upstream_modules("stemd._authoring", as_package=True)
    assert sorted(imported) == ["stemd._errors", "stemd._identifiers", "stemd._model"]


def test_authoring_engine_and_their_observers_are_in_no_import_cycle(
    graph: grimp.ImportGraph,
) -> None:
    """No module of authoring, the engine, the timer, sweeper, workers, tracing or metrics
    imports a module that imports it back (through any chain)."""
    cycles = []
    for module in sorted(graph.modules):
        if not _in(module, ACYCLIC):
            continue
        for target in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=target, imported=module)
            if chain is not None:
                cycles.append(" -> ".join((module, *chain)))
    assert cycles == []
