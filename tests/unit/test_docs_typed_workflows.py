"""The programs of the typed-workflows how-to run as written and print what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "howto" / "typed-workflows.md"


def _programs() -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    return [
        code
        for fragment, code in re.findall(
            r"(<!-- fragment[^\n]*-->\n)?```python\n(.*?)```", text, re.S
        )
        if not fragment
    ]


EXPECTED = [
    "completed Receipt(order_id='o-1', charged=42)\nrefused: params of orders.checkout",
    "Account(user_id='user:ana@example.com', plan='free')",
    "resumed 1\nship o-1 (42)",
    "Receipt(charge_id='ch-o-1-42', label='ship-parcel:ch-o-1-42')\n['charge', 'ship-parcel']",
    "entry 1 (attempt 1)\nasking for a review\nentry 2 (attempt 1)\nentry 3 (attempt 1)\nana",
]


def test_the_page_has_the_programs_checked_here() -> None:
    """Every program on the page is checked below (a new one needs its expected output)."""
    assert len(_programs()) == len(EXPECTED)


@pytest.mark.parametrize(("index", "expected"), list(enumerate(EXPECTED)))
def test_each_program_runs_and_prints_what_the_page_says(
    tmp_path: Path, index: int, expected: str
) -> None:
    """The program runs to its end in an empty directory (its SQLite file there) and its
    output starts as documented."""
    program = tmp_path / "program.py"
    program.write_text(_programs()[index])
    done = subprocess.run(
        [sys.executable, str(program)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(expected), done.stdout
