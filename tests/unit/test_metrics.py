"""The HTTP endpoint (uvicorn in the daemon's loop) serving metrics and health."""

from __future__ import annotations

import json
import socket

import anyio
import pytest
from prometheus_client import CollectorRegistry, Counter

from stemd._actors.http import HttpEndpoint, listen, parse_address
from stemd._errors import ConfigError
from stemd._health import Health
from stemd._web import Web
from tests.helpers import HttpReply, http

pytestmark = pytest.mark.anyio


def test_parse_address() -> None:
    """Addresses are HOST:PORT; anything else is a ConfigError naming the key."""
    assert parse_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_address(":0") == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="metrics_address"):
        parse_address("nope", "metrics_address")


async def _get(port: int, path: str) -> HttpReply:
    return await http(f"http://127.0.0.1:{port}{path}")


def _web(registry: CollectorRegistry | None, healthy: list[bool]) -> Web:
    async def check() -> tuple[bool, str]:
        return healthy[0], "store down"

    return Web(None, registry=registry, healthy=check, ready=check, api=False)  # type: ignore[arg-type]


async def test_endpoint_serves_metrics_health_and_errors() -> None:
    """GET /metrics returns the registry, /healthz and /readyz reflect the checks, an
    unknown path is 404."""
    reg = CollectorRegistry()
    Counter("stemd_scrapes", "Scrapes.", registry=reg).inc()
    healthy = [True]
    endpoint = HttpEndpoint(_web(reg, healthy).asgi, "127.0.0.1:0")
    async with anyio.create_task_group() as tg:
        await tg.start(endpoint.run)
        assert endpoint.port
        metrics = await _get(endpoint.port, "/metrics")
        assert metrics.status_code == 200
        assert "stemd_scrapes_total 1.0" in metrics.text
        assert (await _get(endpoint.port, "/healthz")).status_code == 200
        assert (await _get(endpoint.port, "/readyz")).status_code == 200
        healthy[0] = False
        reply = await _get(endpoint.port, "/healthz")
        assert (reply.status_code, reply.text) == (503, "store down\n")
        assert (await _get(endpoint.port, "/readyz")).status_code == 503
        assert (await _get(endpoint.port, "/nope")).status_code == 404
        assert endpoint.statistics().requests >= 6
        tg.cancel_scope.cancel()


async def test_listen_names_the_key_and_the_address() -> None:
    """Binding an address in use, or a host that does not resolve, is a ConfigError
    ``key address: reason``."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(ConfigError) as caught:
            await listen(address, "metrics_address")
        assert str(caught.value) == f"metrics_address {address}: address already in use"
    with pytest.raises(ConfigError, match=r"^http_address no-such-host\.invalid:1: cannot resolve"):
        await listen("no-such-host.invalid:1")


async def test_endpoint_on_a_given_listener_serves_again_after_a_restart() -> None:
    """Given a bound socket, the endpoint serves on it and leaves it open when it stops,
    so the supervisor's restart serves the same port again with no new bind."""
    sock = await listen("127.0.0.1:0")
    endpoint = HttpEndpoint(_web(None, [True]).asgi, listener=sock)
    try:
        for _ in range(2):  # first start, then a restart of the actor
            async with anyio.create_task_group() as tg:
                await tg.start(endpoint.run)
                assert endpoint.port == sock.getsockname()[1]
                assert (await _get(endpoint.port, "/healthz")).status_code == 200
                tg.cancel_scope.cancel()
    finally:
        sock.close()


@pytest.fixture
def anyio_backend() -> str:
    """These tests run on asyncio only (uvicorn)."""
    return "asyncio"


async def test_readyz_answers_503_with_the_dependencies_away_while_degraded() -> None:
    """/readyz: 200 when ready, 503 with the degraded state as JSON; /healthz stays 200."""
    health = Health()
    web = Web(None, health=health.state, api=False)  # type: ignore[arg-type]
    endpoint = HttpEndpoint(web.asgi, "127.0.0.1:0")
    async with anyio.create_task_group() as tg:
        await tg.start(endpoint.run)
        assert endpoint.port
        assert (await _get(endpoint.port, "/readyz")).status_code == 200
        health.report("timer", "nats", "request to x: timeout")
        degraded = await _get(endpoint.port, "/readyz")
        assert degraded.status_code == 503
        body = json.loads(degraded.text)
        assert body["state"] == "degraded"
        assert body["degraded"] == {"nats": "request to x: timeout"}
        assert (await _get(endpoint.port, "/healthz")).status_code == 200
        health.clear("timer")
        assert (await _get(endpoint.port, "/readyz")).status_code == 200
        tg.cancel_scope.cancel()
