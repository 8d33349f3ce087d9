"""A 3-node JetStream cluster started from the shipped deploy/nats/cluster/n*.conf files,
with only their ports and store directories substituted (loopback only), so that the
test runs exactly the configuration operators deploy."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from stemd.testing._nats import NatsServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from stemd._natsconn import NatsConnection

__all__ = ["ClusterNode", "adapt_configs", "free_ports", "nats_cluster", "stream_cluster"]

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "deploy" / "nats" / "cluster" / f"n{i}.conf" for i in (1, 2, 3)]
_ADDRESS = re.compile(r"127\.0\.0\.1:(\d+)")
_STORE_DIR = re.compile(r"^(\s*store_dir:\s*)(\S+)$", re.MULTILINE)
_SYNC = re.compile(r"^(\s*sync_interval:\s*)(\S+)$", re.MULTILINE)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def substitute(tmp: Path) -> list[tuple[str, Path, int, int]]:
    """Write the three shipped configs into ``tmp`` with fresh loopback ports and store
    dirs; return (server name, config path, client port, monitoring port) per node."""
    for path in CONFIGS:
        text = path.read_text()
        assert "sync_interval: always" in text, "the shipped cluster must fsync every write"
        assert "0.0.0.0" not in text
    return adapt_configs(CONFIGS, tmp)


def adapt_configs(
    configs: list[Path], tmp: Path, sync: str | None = None
) -> list[tuple[str, Path, int, int]]:
    """Write ``configs`` into ``tmp`` with fresh loopback ports (the same for every
    mention of a port across them) and a store dir each; ``sync`` replaces
    ``sync_interval`` unless ``None``. (server name, config path, client port,
    monitoring port) per node.

    Raises:
        ValueError: a config without server_name, listen, http or store_dir.
    """
    texts = [path.read_text() for path in configs]
    ports = sorted({int(p) for text in texts for p in _ADDRESS.findall(text)})
    mapping = dict(zip(ports, free_ports(len(ports)), strict=True))
    nodes = []
    for path, text in zip(configs, texts, strict=True):
        name = re.search(r"^server_name:\s*(\S+)", text, re.MULTILINE)
        client = re.search(r"^listen:\s*127\.0\.0\.1:(\d+)", text, re.MULTILINE)
        http = re.search(r"^http:\s*127\.0\.0\.1:(\d+)", text, re.MULTILINE)
        if not (name and client and http):
            raise ValueError(f"{path}: no server_name, listen or http")
        store = tmp / name[1]
        store.mkdir()
        text = _ADDRESS.sub(lambda m: f"127.0.0.1:{mapping[int(m[1])]}", text)
        text, n = _STORE_DIR.subn(lambda m, store=store: f"{m[1]}{store}", text)
        if n != 1:
            raise ValueError(f"{path}: no store_dir")
        if sync is not None:
            text = _SYNC.sub(lambda m: f"{m[1]}{sync}", text)
        out = tmp / path.name
        out.write_text(text)
        nodes.append((name[1], out, mapping[int(client[1])], mapping[int(http[1])]))
    return nodes


class ClusterNode(NatsServer):
    """One node, started as ``nats-server -c CONFIG`` (nothing on the command line but
    the log file), restartable on the same ports and store."""

    def __init__(self, name: str, config: Path, port: int, monitor_port: int) -> None:
        super().__init__(str(config.parent / name), port=port)
        self.name = name
        self.config = config
        self.monitor_port = monitor_port

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:  # type: ignore[override]
        # The base class builds a command line of flags; a node takes its config file.
        del cmd
        return subprocess.Popen(
            [self.binary, "-c", str(self.config), "-l", self._log_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def http_json(self, path: str) -> dict[str, Any]:
        """GET a monitoring endpoint of this node."""
        request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()
        with anyio.fail_after(2):
            async with await anyio.connect_tcp("127.0.0.1", self.monitor_port) as stream:
                await stream.send(request)
                data = b""
                with contextlib.suppress(anyio.EndOfStream):
                    while True:
                        data += await stream.receive()
        body = data.split(b"\r\n\r\n", 1)[1]
        result: dict[str, Any] = json.loads(body)
        return result


async def _meta_leader(nodes: list[ClusterNode]) -> str | None:
    for node in nodes:
        try:
            jsz = await node.http_json("/jsz")
        except (OSError, TimeoutError, ValueError, IndexError):
            continue
        leader = (jsz.get("meta_cluster") or {}).get("leader")
        if leader:
            return str(leader)
    return None


@contextlib.asynccontextmanager
async def nats_cluster(tmp: Path, timeout: float = 30.0) -> AsyncIterator[list[ClusterNode]]:
    """Start the three nodes and wait until the cluster has elected its meta leader."""
    nodes = [ClusterNode(*spec) for spec in substitute(tmp)]
    try:
        async with anyio.create_task_group() as tg:
            for node in nodes:
                tg.start_soon(node.start)
        with anyio.fail_after(timeout):
            while await _meta_leader(nodes) is None:  # noqa: ASYNC110 - polled over HTTP
                await anyio.sleep(0.1)
        yield nodes
    finally:
        for node in nodes:
            node.kill()


async def stream_cluster(conn: NatsConnection, stream: str) -> dict[str, Any]:
    """The ``cluster`` part of a stream's info: ``leader`` and ``replicas``."""
    info = await conn.js_api(f"STREAM.INFO.{stream}", timeout=2)
    cluster: dict[str, Any] = info.get("cluster") or {}
    return cluster
