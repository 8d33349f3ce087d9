"""The public surface: three modules export it, everything else is private, and the API
reference lists exactly what they export."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import stemd

API_REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "api.md"
PUBLIC_MODULES = ("stemd", "stemd.testing", "stemd.observability")


def _documented() -> dict[str, set[str]]:
    """The names the API reference lists, by module, between its public-api markers."""
    text = API_REFERENCE.read_text(encoding="utf-8")
    block = text.split("<!-- public-api -->", 1)[1].split("<!-- /public-api -->", 1)[0]
    out: dict[str, set[str]] = {}
    for line in block.strip().splitlines():
        match = re.fullmatch(r"- `([\w.]+)`: (.*)", line.strip())
        assert match is not None, line
        out[match.group(1)] = set(re.findall(r"`(\w+)`", match.group(2)))
    return out


def _all_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(stemd.__path__, prefix="stemd.")
        if not info.name.endswith("__main__")
    ]


def test_every_module_outside_the_public_three_is_private() -> None:
    """A module importable as stemd.X without a leading underscore somewhere in its path is
    one of the three public ones."""
    public = [
        name
        for name in _all_modules()
        if not any(part.startswith("_") for part in name.split(".")[1:])
    ]
    assert sorted(public) == sorted(m for m in PUBLIC_MODULES if m != "stemd")


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_the_api_reference_lists_exactly_what_each_public_module_exports(
    module_name: str,
) -> None:
    """A public name added or removed without the API reference changing fails here."""
    module = importlib.import_module(module_name)
    exported = set(module.__all__) - {"__version__"}
    assert exported == _documented()[module_name]
    for name in exported:
        assert getattr(module, name) is not None


def test_the_reference_documents_no_other_module() -> None:
    """The reference's list names the public modules and only those."""
    assert sorted(_documented()) == sorted(PUBLIC_MODULES)


def test_the_contract_names_are_exported() -> None:
    """Every name the contract makes importable from stemd is there (a sample that must
    never go: the authoring API, the App, the model and the errors)."""
    for name in (
        "App",
        "Flow",
        "FlowContext",
        "Script",
        "ScriptContext",
        "StepContext",
        "script",
        "step",
        "Retry",
        "CancellationPolicy",
        "RunState",
        "RunStatus",
        "WorkflowResult",
        "StemError",
        "EventTimeout",
        "ChildFailed",
        "UnknownWorkflow",
        "PayloadError",
        "RunNotFound",
        "StepFailed",
        "WorkflowChanged",
    ):
        assert name in stemd.__all__, name
