"""The Python examples of the README and the tutorials run as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.anyio


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def _exec(code: str, name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile(code, name, "exec"), namespace)
    return namespace


async def test_readme_example_runs(tmp_path: Path) -> None:
    """The README's flow-and-script example completes with the value it promises."""
    code = _python_blocks(ROOT / "README.md")[0]
    code = code.replace("sqlite:///./stemd.db", f"sqlite:///{tmp_path}/readme.db")
    namespace = _exec(code, "readme_example")
    await namespace["main"]()


async def test_first_flow_tutorial_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The first-flow tutorial's program prints a completed run and its checkpoints."""
    blocks = _python_blocks(ROOT / "docs" / "tutorial" / "first-flow.md")
    module = types.ModuleType("approvals")
    exec(compile(blocks[0], "approvals", "exec"), module.__dict__)
    sys.modules["approvals"] = module
    try:
        program = blocks[1].replace("sqlite:///./demo.db", f"sqlite:///{tmp_path}/demo.db")
        program = program.replace("anyio.run(main)", "")
        namespace = _exec(program, "first_flow")
        await namespace["main"]()
    finally:
        del sys.modules["approvals"]
    out = capsys.readouterr().out
    assert "completed approved-by:ana" in out
    assert "'finalize': 'approved-by:ana'" in out


async def test_first_script_tutorial_runs(tmp_path: Path) -> None:
    """The first-script tutorial's signup script completes with the documented value."""
    blocks = _python_blocks(ROOT / "docs" / "tutorial" / "first-script.md")
    namespace = _exec(blocks[0], "first_script")
    import stemd

    async with stemd.App(
        store=f"sqlite:///{tmp_path}/s.db", workflows=[namespace["signup"]]
    ) as app:
        run_id = await app.start_workflow("user.signup", params="ana@example.com")
        result = await app.wait_for_completion(run_id, timeout=10)
    assert result.value == {"userId": "user:ana@example.com", "verified": True}
