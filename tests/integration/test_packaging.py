"""What a new user installs: the README's two commands, the sdist and the wheel's metadata.

The first quick-start command is run for real in a fresh virtualenv with the pip that
``python3 -m venv`` brings (packages come from pip's cache or the package index, as for a
user); the second is the install that ``.ci/run`` performs, so every CI run proves it.
"""

from __future__ import annotations

import email
import os
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from hatchling.builders.sdist import SdistBuilder
from hatchling.builders.wheel import WheelBuilder

from tests.integration.daemon_proc import NotifyListener

ROOT = Path(__file__).resolve().parents[2]


def quick_start_commands() -> list[str]:
    """The shell commands of the README's quick start that install (the two of them)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    return [b.strip() for b in blocks if "python3 -m venv" in b]


def ci_install_lines() -> list[str]:
    """The pip commands of .ci/run, with ``python -m pip`` as the README writes it."""
    lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        if line.startswith("python -m pip install"):
            words = [w for w in shlex.split(line) if w != "--quiet"]
            out.append(" ".join(words[4:]))
    return out


def test_the_quick_start_has_two_commands_and_the_second_is_what_ci_installs() -> None:
    """Command 2 installs exactly what .ci/run installs (the lock, then the project with no
    resolution), so a green CI proves it on a fresh machine with the venv's own pip."""
    commands = quick_start_commands()
    assert len(commands) == 2, commands
    steps = [s.strip() for s in commands[1].split("&&")]
    assert steps[0] == "python3 -m venv .venv"
    assert steps[-1] == ".venv/bin/python -m pytest"
    installs = [s.removeprefix(".venv/bin/pip install ") for s in steps[1:-1]]
    assert installs == ci_install_lines()
    assert "--require-hashes -r requirements/dev.txt" in installs[0]


@pytest.mark.slow
def test_the_first_quick_start_command_runs_the_embedded_daemon(tmp_path: Path) -> None:
    """Command 1, as written, in a fresh venv with its own pip: the daemon reaches READY in
    its embedded default with the bundled examples, and stops cleanly on SIGTERM."""
    command = quick_start_commands()[0]
    install, run = command.rsplit("&&", 1)
    assert run.strip() == ".venv/bin/stemd run"
    venv = tmp_path / ".venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STEMD_", "VIRTUAL_ENV"))}
    # The README runs from the checkout: its relative paths (requirements/, .) resolve
    # there; the venv goes to a temporary place instead of the checkout's .venv.
    script = install.replace(".venv/", f"{venv}/").replace("-m venv .venv", f"-m venv {venv}")
    done = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    listener = NotifyListener(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(
        [str(venv / "bin" / "stemd"), "run"],
        cwd=work,
        env={**env, "NOTIFY_SOCKET": listener.address},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ready = listener.wait_for("READY=1", timeout=60)
        assert "READY=1" in ready
        assert (work / "stemd.db").exists()
        proc.terminate()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        listener.close()
    # The examples plugin was installed beside the local stemd and is what runs.
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import stemd_examples, stemd; print('ok')"],
        capture_output=True,
        text=True,
        cwd=work,
    )
    assert listed.stdout.strip() == "ok", listed.stderr


def test_the_sdist_carries_tests_docs_and_deployment_files(tmp_path: Path) -> None:
    """The source release holds what it takes to test, document and deploy stemd, and
    nothing that is only the repository's (.gitignore, caches)."""
    builder = SdistBuilder(str(ROOT))
    path = Path(next(builder.build(directory=str(tmp_path), versions=["standard"])))
    with tarfile.open(path) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in (
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "requirements/runtime.txt",
        "requirements/dev.txt",
        "stemd/__init__.py",
        "tests/conftest.py",
        "docs/index.md",
        "systemd/stemd.service",
        "systemd/stemd@.service",
        "deploy/stemd.example.toml",
        "plugins/stemd-examples/pyproject.toml",
        "plugins/stemd-examples/stemd_examples/__init__.py",
    ):
        assert needed in names, needed
    assert ".gitignore" not in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith((".git/", ".ci/", ".venv/"))]


def test_the_wheel_declares_license_urls_classifiers_and_authors(tmp_path: Path) -> None:
    """The wheel's metadata names the licence (and ships its text), the project's URLs,
    classifiers and authors."""
    builder = WheelBuilder(str(ROOT))
    path = Path(next(builder.build(directory=str(tmp_path), versions=["standard"])))
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(wheel.read(meta_name))
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
        assert "stemd/py.typed" in names
    assert meta["License-Expression"] == "Apache-2.0"
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Source", "Changelog"} <= set(urls)
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    assert meta["Author"] or meta["Author-email"]
    assert meta["Requires-Python"] == ">=3.11"
    assert sys.version_info >= (3, 11)
