"""The code blocks of README.md and docs/**/*.md, run by the test suite through Sybil.

The repository's conftest.py hands README.md and every docs/**/*.md file to ``DOCS``; each
fenced block becomes one test, run in the order of the page. docs/contributing.md tells
writers the same rules:

- Each page runs in a fresh temporary directory, its working directory while its blocks
  run (``sqlite:///./stemd.db`` stays as written) and first on ``sys.path``. Python blocks
  of a page share one namespace, in order, as if pasted one after the other in a file.
- ```` ```python ````: run. A ``print(...)`` line's trailing comment, or a comment line
  right below it, is the output the page promises: what the block prints must contain it.
  A block that defines ``async def main`` must also run it (``anyio.run(main)``).
- A python block whose first line is ``# NAME.py`` (``# myapp/workflows.py``) is that
  file: it is written into the page's directory and imported (a later block or file can
  import it, as the tutorial's program imports ``approvals``). A ``# test_NAME.py`` file
  is a test module: pytest runs it in a subprocess, and it must pass (at least one test
  passed, none failed or skipped); a block that defines ``test_*`` functions must be one.
- ```` ```toml ````: a stemd configuration, loaded with ``stemd._config.load_config`` (files
  it names under ``[nats_auth]`` are not read: they live on the target machine).
- ```` ```sh ```` (``bash``, ``shell``): run with ``bash -euo pipefail`` in the page's
  directory, with the venv's ``bin`` first on ``PATH`` and ``.venv/bin`` there a link to
  it (so ``.venv/bin/stemd`` works as written); it must exit 0.
- ```` ```console ````: ``$ command`` lines, each followed by its output: each command runs
  as above and prints exactly the lines shown (stdout and stderr); it exits non-zero when
  its shown output is a ``stemd:`` error line, else 0.
- ```` ```json ````: must parse.
- ``<!-- fragment: REASON -->`` or ``<!-- not run: REASON -->`` right above a block: it
  is not run, only checked for syntax (Python compiled, top-level ``await`` allowed; TOML
  and JSON parsed; shell by ``bash -n``). The reason is required.
- ``<!-- invisible-code-block: python ... -->`` (Sybil's own): a block the reader does not
  see, run like a visible one (a module a test imports, say).
- Blocks with no language, ``text`` or ``markdown`` are shown as they are, not checked. Any other
  language fails the page's collection: teach this file about it, or mark the block.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer, FencedCodeBlockLexer

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from sybil.region import Lexeme

__all__ = ["DOCS", "ROOT", "Block", "doc_paths", "evaluate_document", "is_doc"]

ROOT = Path(__file__).resolve().parents[1]

PYTHON = ("python",)
SHELL = ("sh", "bash", "shell")
CONSOLE = ("console",)
TOML = ("toml",)
JSON = ("json",)
TEXT = ("", "text", "markdown", "md")
CHECKED = PYTHON + SHELL + CONSOLE + TOML + JSON

_MARKER = re.compile(r"<!--\s*(fragment|not run):(?P<reason>[^\n]*?)-->\s*\Z")
_FILE_LINE = re.compile(r"#\s*(?P<name>[A-Za-z_][\w/]*\.py)\s*\n")
_EXPECTED = re.compile(r"^\s*print\(.*\)\s*#\s?(?P<out>.+)$")
_COMMENT = re.compile(r"^\s*#\s?(?P<out>.+)$")
_STATE = "__stemd_docs__"
_TIMEOUT = 90.0


def is_doc(path: Path) -> bool:
    """Whether ``path`` is one of the pages whose blocks run: README.md or docs/**/*.md."""
    path = path.resolve()
    docs = ROOT / "docs"
    return path == ROOT / "README.md" or (path.suffix == ".md" and docs in path.parents)


def doc_paths() -> list[Path]:
    """README.md and every page under docs/, sorted."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass(frozen=True, kw_only=True)
class Block:
    """One fenced (or invisible) code block of a page."""

    language: str
    source: Lexeme
    line: int
    marker: str | None = None  # "fragment" / "not run": checked for syntax only
    reason: str = ""

    @property
    def runs(self) -> bool:
        return self.marker is None

    @property
    def file_name(self) -> str | None:
        """The ``# NAME.py`` a python block starts with, if it is a file."""
        match = _FILE_LINE.match(self.source)
        return match.group("name") if match else None


@dataclass(kw_only=True)
class _PageState:
    """A page's working directory, and what to restore when the page is done."""

    workdir: Path
    old_cwd: str
    modules_before: set[str] = field(default_factory=set)


# -- parsing --------------------------------------------------------------------------------


class _BlockParser:
    """Every fenced block of a page (and Sybil's invisible ones) as one example each."""

    def __init__(self) -> None:
        self.fenced = FencedCodeBlockLexer(
            language=r"[^\n]*", mapping={"language": "language", "source": "source"}
        )
        self.invisible = DirectiveInHTMLCommentLexer(
            directive=r"invisible-code-block", arguments=r"[\w-]+"
        )

    def __call__(self, document: Document) -> Iterable[Region]:
        regions = [*self.fenced(document)]
        for region in self.invisible(document):
            region.lexemes["language"] = region.lexemes["arguments"]
            regions.append(region)
        for region in regions:
            language = region.lexemes["language"].strip().lower()
            line = document.text.count("\n", 0, region.start) + 1
            where = f"{document.path}:{line}"
            if language in TEXT:
                continue
            marker, reason = _marker_before(document.text, region.start)
            if marker is not None and not reason:
                raise ValueError(f"{where}: '<!-- {marker}: -->' needs a reason")
            if language not in CHECKED:
                raise ValueError(
                    f"{where}: a ```{language} block: tests/docs.py cannot check it; "
                    "make it text (no language) or teach tests/docs.py about it"
                )
            source = region.lexemes["source"]
            block = Block(language=language, source=source, line=line, marker=marker, reason=reason)
            yield Region(region.start, region.end, block, _evaluate)


def _marker_before(text: str, start: int) -> tuple[str | None, str]:
    """The ``<!-- fragment: ... -->`` / ``<!-- not run: ... -->`` right above a block."""
    match = _MARKER.search(text, max(0, start - 400), start)
    if match is None:
        return None, ""
    return match.group(1), match.group("reason").strip()


# -- a page's directory ---------------------------------------------------------------------


def _setup(namespace: dict[str, Any]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="stemd-docs-")).resolve()
    (workdir / ".venv").mkdir()
    (workdir / ".venv" / "bin").symlink_to(Path(sys.executable).parent, target_is_directory=True)
    state = _PageState(workdir=workdir, old_cwd=os.getcwd(), modules_before=set(sys.modules))
    namespace[_STATE] = state
    namespace["__name__"] = "__main__"
    os.chdir(workdir)
    sys.path.insert(0, str(workdir))


def _teardown(namespace: dict[str, Any]) -> None:
    state: _PageState = namespace.pop(_STATE)
    os.chdir(state.old_cwd)
    with contextlib.suppress(ValueError):
        sys.path.remove(str(state.workdir))
    for name in set(sys.modules) - state.modules_before:
        module_file = getattr(sys.modules[name], "__file__", None) or ""
        if module_file.startswith(str(state.workdir)) or name.split(".")[0] in _page_packages(
            state
        ):
            del sys.modules[name]
    shutil.rmtree(state.workdir, ignore_errors=True)


def _page_packages(state: _PageState) -> set[str]:
    return {p.name for p in state.workdir.iterdir() if p.is_dir() and p.name != ".venv"}


def _env() -> dict[str, str]:
    """The environment of shell blocks and test modules: the venv first, no STEMD_*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STEMD_", "PYTEST_", "COV_")) and k != "PYTHONPATH"
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


# -- evaluation -----------------------------------------------------------------------------


def _evaluate(example: Example) -> str | None:
    block: Block = example.parsed
    if block.language in PYTHON:
        return _python(example, block)
    if block.language in TOML:
        return _toml(example, block)
    if block.language in JSON:
        if block.runs:
            json.loads(block.source)
        return None
    if block.language in SHELL:
        return _shell(example, block)
    return _console(example, block)


def _state(example: Example) -> _PageState:
    state: _PageState = example.namespace[_STATE]
    return state


def _python(example: Example, block: Block) -> str | None:
    __tracebackhide__ = True
    filename = f"{example.path}"
    padded = "\n" * (example.line + block.source.line_offset) + block.source
    if not block.runs:
        compile(padded, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        return None
    name = block.file_name
    if name is not None:
        return _python_file(example, block, name)
    if re.search(r"^(async )?def test_", block.source, re.M):
        return "the block defines tests that nothing runs: start it with '# test_NAME.py'"
    if re.search(r"^async def main\(", block.source, re.M) and not re.search(
        r"\brun\(\s*main\b", block.source
    ):
        return "the block defines async def main() but never runs it (anyio.run(main))"
    code = compile(padded, filename, "exec", dont_inherit=True)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(code, example.namespace)
    finally:
        example.namespace.pop("__builtins__", None)
        sys.stdout.write(out.getvalue())
    missing = [e for e in _expected_output(block.source) if e not in out.getvalue()]
    if missing:
        return f"the page promises output it did not print: {missing!r}\nprinted:\n{out.getvalue()}"
    return None


def _expected_output(source: str) -> list[str]:
    """The comments that say what a ``print`` line prints."""
    expected: list[str] = []
    lines = source.splitlines()
    for i, line in enumerate(lines):
        match = _EXPECTED.match(line)
        if match:
            expected.append(match.group("out").strip())
        elif line.lstrip().startswith("print(") and i + 1 < len(lines):
            below = _COMMENT.match(lines[i + 1])
            if below:
                expected.append(below.group("out").strip())
    return expected


def _python_file(example: Example, block: Block, name: str) -> str | None:
    state = _state(example)
    path = state.workdir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(block.source, encoding="utf-8")
    if Path(name).name.startswith("test_"):
        return _pytest_module(state, name)
    module = name.removesuffix(".py").replace("/", ".")
    for loaded in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
        del sys.modules[loaded]
    importlib.invalidate_caches()
    importlib.import_module(module)
    return None


def _pytest_module(state: _PageState, name: str) -> str | None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
    done = subprocess.run(
        [*command, name],
        cwd=state.workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0 or " passed" not in output or "skipped" in output:
        return f"pytest {name} exited {done.returncode}:\n{output}"
    return None


def _toml(example: Example, block: Block) -> str | None:
    from stemd._config import load_config
    from stemd._errors import ConfigError

    tomllib.loads(block.source)
    if not block.runs:
        return None
    with tempfile.TemporaryDirectory(prefix="stemd-docs-toml-") as tmp:
        path = Path(tmp) / "stemd.toml"
        path.write_text(block.source, encoding="utf-8")
        try:
            load_config(path, environ={}, check_auth=False)
        except ConfigError as exc:
            return f"not a valid stemd configuration: {exc}"
    return None


def _bash(script: str, cwd: Path, *, syntax_only: bool = False) -> subprocess.CompletedProcess[str]:
    flags = ["-n"] if syntax_only else ["-euo", "pipefail"]
    return subprocess.run(
        ["bash", *flags, "-c", script],
        cwd=cwd,
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=_TIMEOUT,
        check=False,
    )


def _shell(example: Example, block: Block) -> str | None:
    state = _state(example)
    done = _bash(block.source, state.workdir, syntax_only=not block.runs)
    if done.returncode != 0:
        return f"the shell block exited {done.returncode}:\n{done.stdout}"
    return None


@dataclass(frozen=True)
class _Command:
    line: str
    output: list[str]


def _console_commands(source: str) -> Iterator[_Command]:
    command: list[str] | None = None
    output: list[str] = []
    lines = iter(source.splitlines())
    for line in lines:
        if line.startswith("$ "):
            if command is not None:
                yield _Command("\n".join(command), output)
            command, output = [line[2:]], []
            while command[-1].endswith("\\"):
                command.append(next(lines, ""))
        elif command is None:
            raise ValueError(f"console block: output before any '$ ' command: {line!r}")
        else:
            output.append(line.rstrip())
    if command is not None:
        yield _Command("\n".join(command), output)


def _console(example: Example, block: Block) -> str | None:
    state = _state(example)
    for command in _console_commands(block.source):
        done = _bash(command.line, state.workdir, syntax_only=not block.runs)
        if not block.runs:
            if done.returncode != 0:
                return f"$ {command.line}: not valid shell:\n{done.stdout}"
            continue
        printed = [line.rstrip() for line in done.stdout.rstrip("\n").splitlines()]
        error = bool(command.output) and command.output[0].startswith("stemd:")
        if error == (done.returncode == 0):
            want = "non-zero (an error is shown)" if error else "0"
            return f"$ {command.line}: exited {done.returncode}, want {want}:\n{done.stdout}"
        if command.output and printed != command.output:
            shown = "\n".join(command.output)
            return (
                f"$ {shlex.quote(command.line)} printed:\n{done.stdout}\nthe page shows:\n{shown}"
            )
    return None


def evaluate_document(path: Path) -> list[tuple[Example, BaseException | str | None]]:
    """Run every block of ``path`` as the suite does, outside pytest: each example with
    what it raised or returned (``None``: it passed)."""
    document = DOCS.parse(path)
    _setup(document.namespace)
    outcomes: list[tuple[Example, BaseException | str | None]] = []
    try:
        for example in document.examples():
            try:
                outcome = example.region.evaluator(example) if example.region.evaluator else None
            except Exception as exc:
                outcome = exc
            outcomes.append((example, outcome))
    finally:
        _teardown(document.namespace)
    return outcomes


DOCS = Sybil(
    parsers=[_BlockParser()],
    patterns=["*.md"],
    path=str(ROOT),
    setup=_setup,
    teardown=_teardown,
    name="docs",
)
