"""Your own workflows under the daemon: `stemd run` (the installed console script, as a
user runs it) imports ``modules`` from the directory it starts in, or from ``--app-dir``
/ ``app_dir`` / ``STEMD_APP_DIR``, with no PYTHONPATH; it records them in its store."""

from __future__ import annotations

import json
import signal
import time
from typing import TYPE_CHECKING

import pytest

from stemd._cli.main import run_cli
from tests.integration.daemon_proc import DaemonProcess, NotifyListener, write_config

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("restore_logging")]

MODULE = "appdir_flows"
SOURCE = """\
import stemd

greet = stemd.Flow("appdir.greet")


@greet.step("hello")
async def hello(ctx: stemd.FlowContext) -> str:
    return f"hello {ctx.params['who']}"
"""


def project(tmp_path: Path) -> Path:
    """A directory holding the user's module, as written next to their config."""
    path = tmp_path / "project"
    path.mkdir()
    (path / f"{MODULE}.py").write_text(SOURCE)
    return path


def config(directory: Path, store: str, **extra: object) -> Path:
    """A ``stemd.toml`` in ``directory`` loading the test module with ``store``."""
    return write_config(
        directory / "stemd.toml",
        modules=[MODULE],
        entry_points=False,
        store=store,
        log_format="json",
        sweep_interval=0.2,
        **extra,
    )


def ready(daemon: DaemonProcess, notify: NotifyListener, timeout: float = 30.0) -> None:
    """Wait for READY=1, failing at once (with its error) if the daemon exits instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"the daemon exited: {daemon.stderr.strip()}")
        try:
            notify.wait_for("READY=1", timeout=0.2)
            return
        except AssertionError:
            continue
    raise AssertionError("no READY=1 from the daemon")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``stemd ARGV``; return its exit status, stdout and stderr."""
    capsys.readouterr()
    status = run_cli(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_a_daemon_imports_modules_from_the_directory_it_starts_in(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, notify: NotifyListener
) -> None:
    """`stemd run` started in the directory holding ``approvals.py``-like modules imports
    them with no PYTHONPATH, registers them, and runs their runs."""
    proj = project(tmp_path)
    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    daemon = DaemonProcess(proj, config(proj, store), notify, script=True)
    try:
        ready(daemon, notify)
        status, out, _ = cli(capsys, "workflow", "types", "--store", store, "--json")
        assert status == 0
        (info,) = json.loads(out)["workflows"]
        assert (info["name"], info["kind"], info["steps"]) == ("appdir.greet", "flow", ["hello"])
        params = json.dumps({"who": "ana"})
        argv = ["workflow", "start", "appdir.greet", "--params", params, "--run-id", "g1"]
        assert cli(capsys, *argv, "--store", store)[0] == 0
        status, out, _ = cli(capsys, "workflow", "wait", "g1", "--timeout", "20", "--store", store)
        assert status == 0, out
        assert 'result    "hello ana"' in out
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
    finally:
        daemon.kill()


@pytest.mark.parametrize("how", ["flag", "config", "env"])
def test_the_app_dir_is_given_by_flag_config_or_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, notify: NotifyListener, how: str
) -> None:
    """`--app-dir DIR` (relative to where the daemon starts), ``app_dir`` in the config
    and ``STEMD_APP_DIR`` each make the modules of DIR importable from elsewhere."""
    proj = project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    extra: dict[str, object] = {"app_dir": str(proj)} if how == "config" else {}
    env = {"STEMD_APP_DIR": str(proj)} if how == "env" else {}
    args = ("--app-dir", "../project") if how == "flag" else ()
    daemon = DaemonProcess(
        elsewhere, config(elsewhere, store, **extra), notify, env, script=True, args=args
    )
    try:
        ready(daemon, notify)
        status, out, _ = cli(capsys, "workflow", "types", "--store", store, "--json")
        assert status == 0
        assert [w["name"] for w in json.loads(out)["workflows"]] == ["appdir.greet"]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
    finally:
        daemon.kill()


def test_a_module_not_found_or_a_bad_app_dir_is_one_line(tmp_path: Path) -> None:
    """A module that is in neither the app directory nor the installed packages, and an
    --app-dir that is no directory, stop the daemon with one line naming them."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = f"sqlite:///{tmp_path / 'stemd.db'}"
    daemon = DaemonProcess(elsewhere, config(elsewhere, store), script=True)
    try:
        assert daemon.wait() == 1
    finally:
        daemon.kill()
    (line,) = daemon.stderr.strip().splitlines()
    assert line.startswith(f"stemd: modules[0]: cannot import '{MODULE}': No module named")
    assert f"looked in the app directory {elsewhere} or the installed packages" in line
    daemon = DaemonProcess(
        elsewhere, config(elsewhere, store), script=True, args=("--app-dir", "nope")
    )
    try:
        assert daemon.wait() == 1
    finally:
        daemon.kill()
    (line,) = daemon.stderr.strip().splitlines()
    assert line == f"stemd: --app-dir: {elsewhere / 'nope'} is not a directory"
