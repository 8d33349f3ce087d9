"""Run ``stemd run`` as a real subprocess and listen to it as systemd would: a datagram
socket passed as ``NOTIFY_SOCKET``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import stemd
from stemd._cli.main import run_cli

if TYPE_CHECKING:
    from collections.abc import Callable

ROOT = Path(__file__).resolve().parents[2]
MODULE = "tests.integration.daemon_workflows"
DEADLINE = 30.0


def write_config(path: Path, **keys: Any) -> Path:
    """A TOML config of ``keys`` (strings, numbers, bools, lists of strings, one table).
    Its HTTP server takes a free port (``http_address`` ``127.0.0.1:0``) unless ``keys``
    name one: daemons started side by side never race for 8080."""
    if "http_address" not in keys and "metrics_address" not in keys:
        keys = {"http_address": "127.0.0.1:0", **keys}
    lines = []
    tables = []
    for key, value in keys.items():
        if isinstance(value, dict):
            tables.append(f"[{key}]")
            tables += [f"{k} = {_toml(v)}" for k, v in value.items()]
        else:
            lines.append(f"{key} = {_toml(value)}")
    path.write_text("\n".join(lines + tables) + "\n")
    return path


def daemon_config(tmp_path: Path, **keys: Any) -> Path:
    """``tmp_path/stemd.toml`` for a daemon serving this package's test workflows (no entry
    points) from ``tmp_path/stemd.db``, logging JSON; ``keys`` add to or override that."""
    base: dict[str, Any] = {
        "modules": [MODULE],
        "entry_points": False,
        "store": f"sqlite:///{tmp_path / 'stemd.db'}",
        "log_format": "json",
    }
    return write_config(tmp_path / "stemd.toml", **{**base, **keys})


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml(v) for v in value) + "]"


class NotifyListener:
    """An AF_UNIX datagram socket (a path, or an abstract name) collecting sd_notify messages."""

    def __init__(self, tmp: Path, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"stemd-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = tmp / "notify.sock"
            self.sock.bind(str(path))
            self.address = str(path)
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float = DEADLINE) -> str:
        """Return the first message (already received or arriving) that holds ``field``."""
        for msg in self.messages:
            if field in msg.split("\n"):
                return msg
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {field} from the daemon; got {self.messages!r}")
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(msg)
            if field in msg.split("\n"):
                return msg

    def drain(self) -> list[str]:
        """Every message received so far, reading what is still queued without waiting."""
        self.sock.setblocking(False)
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        return self.messages

    def close(self) -> None:
        self.sock.close()


class DaemonProcess:
    """One ``stemd [OPTIONS] run`` subprocess in ``cwd``: ``python -m stemd``, or with
    ``script`` the installed ``stemd`` console script (which, unlike ``-m``, does not put the
    working directory on ``sys.path`` by itself); ``args`` are appended."""

    def __init__(
        self,
        cwd: Path,
        config: Path | None,
        notify: NotifyListener | None = None,
        env: dict[str, str] | None = None,
        *,
        script: bool = False,
        args: tuple[str, ...] = (),
        options: list[str] | None = None,
    ) -> None:
        self.cwd = cwd
        full = {k: v for k, v in os.environ.items() if not k.startswith("STEMD_")}
        # No empty entry: it would put the working directory on sys.path.
        full["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), full.get("PYTHONPATH")] if p)
        if notify is not None:
            full["NOTIFY_SOCKET"] = notify.address
        full.update(env or {})
        if script:
            exe = [str(Path(sys.executable).parent / "stemd")]
        else:
            exe = [sys.executable, "-m", "stemd"]
        argv = [*exe, *(options or []), "run"]
        if config is not None:
            argv += ["--config", str(config)]
        argv += args
        self.stdout_path = cwd / f"daemon-{time.monotonic_ns()}.out"
        self.stderr_path = self.stdout_path.with_suffix(".err")
        self._out = self.stdout_path.open("wb")
        self._err = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=full, stdout=self._out, stderr=self._err)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()
            self._err.close()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()
        self._err.close()


def wait_file(path: Path, check: Callable[[list[str]], bool], timeout: float = DEADLINE) -> None:
    """Wait until the lines of ``path`` satisfy ``check`` (the observable side effects of
    the daemon's steps)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if check(lines):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting on {path}: {lines[-10:]!r}")
        time.sleep(0.02)


def cli(*argv: str) -> int:
    """``stemd ARGV`` in this process; returns the exit status."""
    return run_cli(list(argv))


def run_state(db: Path, run_id: str) -> stemd.RunState | None:
    """The state of a run, read straight from the SQLite file."""
    import anyio

    async def get() -> stemd.RunState | None:
        async with stemd.App(store=f"sqlite:///{db}", workers=False) as app:
            return await app.get_run(run_id)

    return anyio.run(get)
