"""Build hook: the source release leaves out the repository's .gitignore.

hatchling adds a project's .gitignore to every sdist of its own accord, so that a rebuild
from the sdist excludes the same files; stemd's sdist lists what it carries explicitly
(``only-include``), so the file would only be a stray.
"""

from __future__ import annotations

from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Drops the force-included .gitignore from the sdist."""

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Remove every force-included file named .gitignore (sdist only)."""
        if self.target_name != "sdist":
            return
        forced = build_data.get("force_include", {})
        for source in [s for s, target in forced.items() if target == ".gitignore"]:
            del forced[source]
