"""``stemd run`` as a child process for the benchmarks: readiness through the systemd
notify protocol, and the figures of a process (RSS, open files, CPU) from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from stemd._natsconn import NatsConnection

ROOT = Path(__file__).resolve().parent.parent


def write_config(path: Path, **keys: Any) -> Path:
    """A TOML file of ``keys`` (strings, numbers, booleans, lists of strings). Its HTTP
    server takes a free port unless ``keys`` name one: daemons side by side never race
    for 8080."""
    if "http_address" not in keys and "metrics_address" not in keys:
        keys = {"http_address": "127.0.0.1:0", **keys}

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return "[" + ", ".join(value(x) for x in v) + "]"

    path.write_text("".join(f"{k} = {value(v)}\n" for k, v in keys.items()))
    return path


class Daemon:
    """One ``python -m stemd run --config CONFIG`` process; :meth:`start` returns once it
    has said READY=1."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> float:
        """Start the daemon; return the seconds it took to be ready."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"stemd-bench-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEMD_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        env["NOTIFY_SOCKET"] = "@" + name
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stemd", "run", "--config", str(self.config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        try:
            while True:
                left = started + timeout - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon did not start; see {self.log}")
                sock.settimeout(min(left, 0.5))
                try:
                    if b"READY=1" in sock.recv(4096).split(b"\n"):
                        return time.monotonic() - started
                except TimeoutError:
                    continue
        finally:
            sock.close()

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if not self.alive:
            return None
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_files(pid: int) -> int:
    """File descriptors open in ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


class Completions:
    """Completion times of runs, from the run events."""

    def __init__(self) -> None:
        self.done: dict[str, float] = {}
        self.waiters: dict[str, anyio.Event] = {}

    def event(self, run_id: str) -> anyio.Event:
        ev = self.waiters.get(run_id)
        if ev is None:
            ev = self.waiters[run_id] = anyio.Event()
        return ev

    async def follow(self, conn: NatsConnection, *, task_status: Any) -> None:
        sub = await conn.subscribe("stem.events.run.*", buffer=1_000_000)
        await conn.flush()
        task_status.started()
        async for msg in sub.messages:
            if b'"status":"completed"' in msg.data:
                run_id = msg.subject.rpartition(".")[2]
                self.done[run_id] = time.perf_counter()
                self.event(run_id).set()
