"""Versions of a workflow's code registered side by side.

A run records the version of the definition it started with (``RunRecord.version``) and is
executed by that version while a process registers it; new runs take the newest. Versions
are integers or strings, ordered naturally (``"1.10"`` after ``"1.9"``, ``2`` after ``1``);
a definition without a version comes before every versioned one and serves the runs that
recorded none (started before versions were declared, or by a process that does not
register the workflow).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["Registry", "definition_for", "version_key", "version_label"]

Version = str | int | None
_PARTS = re.compile(r"\d+|\D+")


def version_key(version: Version) -> tuple[tuple[int, int | str], ...]:
    """The sort key of a version: digits compare as numbers, the rest as text."""
    if version is None:
        return ()
    if isinstance(version, int):
        return ((0, version),)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _PARTS.findall(version))


def version_label(name: str, version: Version) -> str:
    """``'orders' version 3`` (or ``'orders'`` without one), for messages."""
    return f"{name!r}" if version is None else f"{name!r} version {version!r}"


class Registry(dict[str, Any]):
    """The workflows of an App by name (the newest version of each), and every version
    registered of each (:attr:`versions`)."""

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, dict[Version, Any]] = {}

    def add(self, wf: Any) -> None:
        """Register ``wf`` beside the other versions of its name.

        Raises:
            ValueError: another definition has the same name and version.
        """
        version: Version = getattr(wf, "version", None)
        known = self.versions.setdefault(wf.name, {})
        if version in known and known[version] is not wf:
            raise ValueError(f"two workflows are named {version_label(wf.name, version)}")
        known[version] = wf
        self[wf.name] = known[max(known, key=version_key)]

    def every(self) -> list[Any]:
        """Every registered definition, all versions."""
        return [wf for known in self.versions.values() for wf in known.values()]

    def merge(self, workflows: Iterable[Any]) -> None:
        """Register more definitions, all or none."""
        merged = Registry()
        for wf in (*self.every(), *workflows):
            merged.add(wf)
        self.clear()
        self.update(merged)
        self.versions = merged.versions


def definition_for(workflows: Mapping[str, Any], name: str, version: Version) -> Any:
    """The definition that executes a run of ``name`` that started on ``version``: that
    version if registered; for a run without one, the unversioned definition if one is
    registered, else the newest; ``None`` when none fits (the run waits for a process that
    registers its version)."""
    newest = workflows.get(name)
    if newest is None or getattr(newest, "version", None) == version:
        return newest
    known = workflows.versions.get(name, {}) if isinstance(workflows, Registry) else {}
    if version in known:
        return known[version]
    return newest if version is None else None
