"""The machinery that runs the docs' code blocks (tests/docs.py) runs them, and fails a
broken one: a failing doc test cannot pass silently, and the pages cannot collect nothing."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from sybil import Example

from tests.docs import CHECKED, DOCS, TEXT, Block, doc_paths, evaluate_document, is_doc

# What the pages hold today, less a margin: a page that loses its runnable examples (or a
# parser that stops finding them) fails here.
MIN_PYTHON_RUN = 12
MIN_TOML_RUN = 3
MIN_SHELL_RUN = 1

_FENCE = re.compile(r"^[ \t]*(?:[-*+][ \t]+)?(`{3,}|~{3,})([^\n`]*)$", re.M)
_INVISIBLE = re.compile(r"^[ \t]*<!--+\s*invisible-code-block:", re.M)


def _page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    return path


def _outcomes(path: Path) -> list[BaseException | str | None]:
    return [outcome for _, outcome in evaluate_document(path)]


def _blocks(path: Path) -> list[Block]:
    return [example.parsed for example in DOCS.parse(path).examples()]


def _tagged_fences(text: str) -> list[str]:
    """The languages of the blocks a plain scan finds (opening fences only)."""
    languages: list[str] = []
    open_fence: str | None = None
    for match in _FENCE.finditer(text):
        fence, info = match.group(1), match.group(2).strip()
        if open_fence is None:
            open_fence = fence
            languages.append(info.lower())
        elif fence[0] == open_fence[0] and len(fence) >= len(open_fence) and not info:
            open_fence = None
    return [lang for lang in languages if lang not in TEXT]


def test_every_tagged_block_of_the_docs_is_collected() -> None:
    """Each page's tagged code blocks are all collected: each is run, or marked with a reason."""
    pages = doc_paths()
    assert ROOT_README in pages
    assert len(pages) > 20
    for path in pages:
        assert is_doc(path)
        text = path.read_text(encoding="utf-8")
        blocks = _blocks(path)
        visible = [b for b in blocks if not _starts_invisible(text, b)]
        assert [b.language for b in visible] == _tagged_fences(text), path
        assert len(blocks) - len(visible) == len(_INVISIBLE.findall(text)), path
        for block in blocks:
            assert block.language in CHECKED
            assert block.runs or block.reason, (path, block.line)


ROOT_README = Path(__file__).resolve().parents[2] / "README.md"


def _starts_invisible(text: str, block: Block) -> bool:
    line = text.splitlines()[block.line - 1]
    return "invisible-code-block" in line


def test_the_docs_keep_a_floor_of_blocks_that_run() -> None:
    """README and docs hold at least the runnable python, TOML and shell blocks they have today."""
    blocks = [b for path in doc_paths() for b in _blocks(path) if b.runs]
    python = [b for b in blocks if b.language == "python"]
    assert len(python) >= MIN_PYTHON_RUN
    assert len([b for b in blocks if b.language == "toml"]) >= MIN_TOML_RUN
    assert len([b for b in blocks if b.language in ("sh", "console")]) >= MIN_SHELL_RUN
    readme = [b for b in _blocks(ROOT_README) if b.language == "python"]
    assert readme
    assert all(b.runs for b in readme)
    example = next(b for b in readme if "async def main" in b.source)
    assert "anyio.run(main)" in example.source


def test_a_failing_python_block_fails(tmp_path: Path) -> None:
    """A python block that raises is a failure, and the blocks around it still run."""
    page = _page(
        tmp_path,
        "```python\nx = 1\n```\n\n```python\nraise RuntimeError('boom')\n```\n\n"
        "```python\nassert x == 1\n```\n",
    )
    first, broken, last = _outcomes(page)
    assert first is None
    assert last is None
    assert isinstance(broken, RuntimeError)


def test_an_async_main_that_is_never_run_fails(tmp_path: Path) -> None:
    """A block that defines async def main() but never calls anyio.run(main) fails."""
    program = "import anyio\n\nasync def main() -> None:\n    print('hi')  # hi\n"
    page = _page(
        tmp_path, f"```python\n{program}```\n\n```python\n{program}\nanyio.run(main)\n```\n"
    )
    never_run, run = _outcomes(page)
    assert isinstance(never_run, str)
    assert "never runs it" in never_run
    assert run is None


def test_promised_output_is_checked(tmp_path: Path) -> None:
    """A print's trailing comment, or the comment line below it, must appear in the output."""
    page = _page(
        tmp_path,
        "```python\nprint('approved-by:ana')   # approved-by:ana\n"
        "print({'a': 1})\n# {'a': 1}\n```\n\n"
        "```python\nprint('approved-by:bob')   # approved-by:ana\n```\n\n"
        "```python\nprint(1)\n# 2\n```\n",
    )
    good, wrong, wrong_below = _outcomes(page)
    assert good is None
    assert isinstance(wrong, str)
    assert "approved-by:ana" in wrong
    assert isinstance(wrong_below, str)
    assert "'2'" in wrong_below


def test_a_file_block_is_written_and_imported_by_later_blocks(tmp_path: Path) -> None:
    """A '# NAME.py' block is a module the page's later blocks import; it is gone afterwards."""
    page = _page(
        tmp_path,
        "```python\n# docs_helper_mod.py\nVALUE = 42\n```\n\n"
        "```python\n# docs_pkg/inner.py\nfrom docs_helper_mod import VALUE\n"
        "DOUBLE = 2 * VALUE\n```\n\n"
        "```python\nfrom docs_pkg.inner import DOUBLE\nassert DOUBLE == 84\n```\n\n"
        "```python\n# docs_broken_mod.py\nimport no_such_module_anywhere\n```\n",
    )
    cwd = os.getcwd()
    *ok, broken = _outcomes(page)
    assert ok == [None, None, None]
    assert isinstance(broken, ModuleNotFoundError)
    assert os.getcwd() == cwd
    assert not {"docs_helper_mod", "docs_pkg", "docs_pkg.inner"} & set(sys.modules)


def test_a_page_runs_in_its_own_directory(tmp_path: Path) -> None:
    """Blocks run in a fresh directory (relative SQLite paths land there), restored after."""
    page = _page(
        tmp_path,
        "```python\nimport os\nopen('stemd.db', 'w').close()\nHERE = os.getcwd()\n```\n\n"
        "```sh\ntest -f stemd.db && test -x .venv/bin/stemd && command -v stemd\n```\n",
    )
    cwd = os.getcwd()
    outcomes = evaluate_document(page)
    assert [o for _, o in outcomes] == [None, None]
    assert os.getcwd() == cwd
    assert not (tmp_path / "stemd.db").exists()
    assert not Path(cwd, "stemd.db").exists()


def test_a_test_module_block_runs_under_pytest(tmp_path: Path) -> None:
    """A '# test_NAME.py' block must pass under pytest: a failing, empty or skipping one fails."""
    module = "```python\n# test_{name}.py\nimport pytest\n\n{body}\n```\n\n"
    page = _page(
        tmp_path,
        module.format(
            name="good",
            body="pytestmark = pytest.mark.anyio\n\nasync def test_ok() -> None:\n    assert True",
        )
        + module.format(name="bad", body="def test_bad() -> None:\n    assert 1 == 2")
        + module.format(name="empty", body="X = 1")
        + module.format(name="skips", body="def test_skip() -> None:\n    pytest.skip('no')"),
    )
    good, bad, empty, skips = _outcomes(page)
    assert good is None
    assert isinstance(bad, str)
    assert "1 failed" in bad
    assert isinstance(empty, str)
    assert "exited 5" in empty
    assert isinstance(skips, str)
    assert "skipped" in skips


def test_tests_outside_a_test_module_fail(tmp_path: Path) -> None:
    """A python block defining test functions that nothing would run fails."""
    page = _page(tmp_path, "```python\nasync def test_x() -> None:\n    assert False\n```\n")
    [outcome] = _outcomes(page)
    assert isinstance(outcome, str)
    assert "test_NAME.py" in outcome


def test_toml_blocks_are_loaded_as_stemd_configuration(tmp_path: Path) -> None:
    """A toml block with an unknown key or a wrong type fails; a fragment is only parsed."""
    page = _page(
        tmp_path,
        '```toml\nstore = "sqlite:///./stemd.db"\nconcurrency = 8\n```\n\n'
        "```toml\ncolour = 1\n```\n\n"
        '```toml\nconcurrency = "many"\n```\n\n'
        "<!-- fragment: a pyproject excerpt -->\n```toml\n[project]\nname = 'x'\n```\n\n"
        "<!-- fragment: broken -->\n```toml\n[project\n```\n",
    )
    good, unknown, wrong_type, fragment, broken_fragment = _outcomes(page)
    assert good is None
    assert fragment is None
    assert isinstance(unknown, str)
    assert "colour" in unknown
    assert isinstance(wrong_type, str)
    assert "concurrency" in wrong_type
    assert broken_fragment is not None


def test_shell_blocks_must_exit_zero(tmp_path: Path) -> None:
    """A sh block runs with -e: a failing command fails it; a not-run block is only parsed."""
    page = _page(
        tmp_path,
        "```sh\nstemd workflow start some.flow --force --store sqlite:///./stemd.db\n"
        "stemd workflow list --store sqlite:///./stemd.db\n```\n\n"
        "```sh\ntrue\nfalse\ntrue\n```\n\n"
        "<!-- not run: needs root -->\n```sh\nsystemctl restart no-such-unit\n```\n\n"
        "<!-- not run: broken -->\n```sh\nif then fi (\n```\n",
    )
    good, failing, not_run, broken = _outcomes(page)
    assert good is None
    assert not_run is None
    assert isinstance(failing, str)
    assert "exited 1" in failing
    assert isinstance(broken, str)


def test_console_blocks_check_output_and_exit_status(tmp_path: Path) -> None:
    """Each '$ command' prints the lines shown, and fails exactly when a stemd: error is shown."""
    page = _page(
        tmp_path,
        "```console\n$ echo hi\nhi\n$ echo a \\\n    b\na b\n$ true\n```\n\n"
        "```console\n$ echo hi\nho\n```\n\n"
        "```console\n$ sh -c 'echo \"stemd: bad\" >&2; exit 2'\nstemd: bad\n```\n\n"
        "```console\n$ echo 'stemd: bad'\nstemd: bad\n```\n\n"
        "```console\n$ false\n```\n",
    )
    good, wrong_output, error_shown, error_but_zero, failing = _outcomes(page)
    assert good is None
    assert error_shown is None
    assert isinstance(wrong_output, str)
    assert "ho" in wrong_output
    assert isinstance(error_but_zero, str)
    assert "exited 0" in error_but_zero
    assert isinstance(failing, str)
    assert "exited 1" in failing


def test_fragments_are_compiled(tmp_path: Path) -> None:
    """A python fragment is compiled (top-level await allowed) but not run."""
    page = _page(
        tmp_path,
        "<!-- fragment: needs app -->\n```python\nawait app.emit('t')\nraise SystemExit\n```\n\n"
        "<!-- fragment: broken -->\n```python\ndef f(:\n```\n",
    )
    fine, broken = _outcomes(page)
    assert fine is None
    assert isinstance(broken, SyntaxError)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- fragment: -->\n```python\nx\n```\n", "needs a reason"),
        ("```yaml\na: 1\n```\n", "cannot check it"),
    ],
)
def test_an_unmarked_or_unknown_block_fails_collection(
    tmp_path: Path, text: str, message: str
) -> None:
    """A marker without a reason, or a language the suite cannot check, fails the page."""
    with pytest.raises(ValueError, match=message):
        DOCS.parse(_page(tmp_path, text))


def test_examples_are_reported_with_their_page_line(tmp_path: Path) -> None:
    """A failing block's traceback points at its line in the page."""
    page = _page(tmp_path, "# Title\n\ntext\n\n```python\nx = 1\nraise KeyError('k')\n```\n")
    [(example, outcome)] = evaluate_document(page)
    assert isinstance(example, Example)
    assert example.line == 5
    assert isinstance(outcome, KeyError)
    assert outcome.__traceback__ is not None
    frames = []
    tb = outcome.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    assert (str(page), 7) in frames
