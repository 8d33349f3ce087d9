"""Finding workflows: config modules and the stemd.workflows entry points."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from stemd._errors import ConfigError
from stemd._loading import import_object, load_workflows

if TYPE_CHECKING:
    from pathlib import Path


def _module(tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text("import stemd\n" + body)


def test_every_top_level_flow_and_script_is_registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module's top-level Flow and script objects are found; other names are not."""
    _module(
        tmp_path,
        "wf_mod_a",
        """
flow = stemd.Flow("a.flow")

@flow.step("one")
async def one(ctx): return 1

@stemd.script("a.script")
async def scr(ctx): return 2

def helper(): return stemd.Flow("not.top.level")
""",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found, sources = load_workflows(["wf_mod_a"], use_entry_points=False)
    assert sorted(w.name for w in found) == ["a.flow", "a.script"]
    assert sources == ["wf_mod_a"]


def test_entry_points_load_the_bundled_examples() -> None:
    """The installed stemd-examples plugin is found through its entry point."""
    found, sources = load_workflows([], use_entry_points=True)
    names = {w.name for w in found}
    assert {"approvals.flow", "user.signup", "examples.flaky", "examples.fanout"} <= names
    assert "entry point examples" in sources


def test_a_module_that_does_not_import_names_its_key() -> None:
    """A module that cannot be imported is a ConfigError naming modules[i]."""
    with pytest.raises(ConfigError, match=r"^modules\[1\]: cannot import 'no_such_mod_xyz'"):
        load_workflows(["stemd", "no_such_mod_xyz"], use_entry_points=False)


def test_a_module_raising_at_import_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module whose import raises is a ConfigError with the error, not a traceback."""
    _module(tmp_path, "wf_mod_boom", "raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="RuntimeError: boom"):
        load_workflows(["wf_mod_boom"], use_entry_points=False)


def test_two_workflows_with_one_name_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two different workflows registered under one name are a ConfigError."""
    _module(tmp_path, "wf_mod_b", 'f = stemd.Flow("same")\n')
    _module(tmp_path, "wf_mod_c", 'g = stemd.Flow("same")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="two different workflows are named 'same'"):
        load_workflows(["wf_mod_b", "wf_mod_c"], use_entry_points=False)


def test_import_object_finds_a_factory() -> None:
    """``module:attribute`` names a callable; anything else is a ConfigError."""
    assert import_object("actors[0]", "stemd._loading:load_workflows") is load_workflows
    with pytest.raises(ConfigError, match="has no attribute"):
        import_object("actors[0]", "stemd._loading:nothing_here")
