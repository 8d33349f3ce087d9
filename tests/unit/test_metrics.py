"""The Prometheus registry and the HTTP endpoint that serves it."""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING

import anyio
import pytest

from stemd._actors.http import HttpEndpoint, listen, parse_address
from stemd._errors import ConfigError
from stemd._health import Health
from stemd._metrics import Registry
from tests.helpers import wait_until

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

pytestmark = pytest.mark.anyio


def test_counter_gauge_histogram_render_in_text_format() -> None:
    """Metrics render with HELP/TYPE lines, labels and cumulative buckets."""
    reg = Registry()
    runs = reg.counter("stemd_runs_total", "Runs.", ["workflow"])
    runs.inc(workflow="a")
    runs.inc(2, workflow='q"uote')
    depth = reg.gauge("stemd_queue_depth", "Depth.")
    depth.set(7)
    hist = reg.histogram("stemd_step_seconds", "Steps.", ["step"], buckets=[0.1, 1.0])
    for v in (0.05, 0.5, 5.0):
        hist.observe(v, step="s")

    text = anyio.run(reg.render)
    assert "# TYPE stemd_runs_total counter" in text
    assert 'stemd_runs_total{workflow="a"} 1' in text
    assert 'stemd_runs_total{workflow="q\\"uote"} 2' in text
    assert "stemd_queue_depth 7" in text
    assert 'stemd_step_seconds_bucket{step="s",le="0.1"} 1' in text
    assert 'stemd_step_seconds_bucket{step="s",le="1"} 2' in text
    assert 'stemd_step_seconds_bucket{step="s",le="+Inf"} 3' in text
    assert 'stemd_step_seconds_count{step="s"} 3' in text
    assert 'stemd_step_seconds_sum{step="s"} 5.55' in text


def test_wrong_labels_and_conflicting_registration_raise() -> None:
    """A metric used with other labels, or registered twice differently, is an error."""
    reg = Registry()
    c = reg.counter("c", "C.", ["a"])
    with pytest.raises(ValueError, match=r"c takes labels \('a',\), got \['b'\]"):
        c.inc(b="x")
    assert reg.counter("c", "C.", ["a"]) is c
    with pytest.raises(ValueError, match="metric c registered twice, differently"):
        reg.gauge("c", "C.", ["a"])


def test_parse_address() -> None:
    """Addresses are HOST:PORT; anything else is a ConfigError naming the key."""
    assert parse_address("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_address(":0") == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match="metrics_address"):
        parse_address("nope")


async def _get(port: int, request: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        data = b""
        try:
            while True:
                data += await stream.receive()
        except anyio.EndOfStream:
            pass
    return data


async def test_endpoint_serves_metrics_health_and_errors() -> None:
    """GET /metrics returns the registry, /healthz reflects health, others are 404/405/400."""
    reg = Registry()
    reg.counter("stemd_scrapes_total", "Scrapes.").inc()
    refreshed: list[int] = []
    reg.collector(lambda: refreshed.append(1))
    healthy = [True]
    endpoint = HttpEndpoint(reg, "127.0.0.1:0", healthy=lambda: healthy[0])
    async with anyio.create_task_group() as tg:
        await tg.start(endpoint.run)
        assert endpoint.port
        metrics = await _get(endpoint.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert metrics.startswith(b"HTTP/1.0 200")
        assert b"stemd_scrapes_total 1" in metrics
        assert refreshed == [1]
        assert (await _get(endpoint.port, b"GET /healthz HTTP/1.0\r\n\r\n")).startswith(
            b"HTTP/1.0 200"
        )
        healthy[0] = False
        assert b" 503 " in await _get(endpoint.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert b" 404 " in await _get(endpoint.port, b"GET /nope HTTP/1.0\r\n\r\n")
        assert b" 405 " in await _get(endpoint.port, b"POST /metrics HTTP/1.0\r\n\r\n")
        assert b" 400 " in await _get(endpoint.port, b"x" * 9000)
        assert endpoint.statistics().requests == 6
        tg.cancel_scope.cancel()


async def test_endpoint_closes_connections_past_its_limit() -> None:
    """Idle connections up to the limit are held (until their read timeout); one more is
    closed at once, unread; once they go, requests are served again."""
    endpoint = HttpEndpoint(Registry(), "127.0.0.1:0", max_connections=4)

    def open_count(count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return endpoint.statistics().open == count

        return check

    async with anyio.create_task_group() as tg:
        await tg.start(endpoint.run)
        assert endpoint.port
        idle = [await anyio.connect_tcp("127.0.0.1", endpoint.port) for _ in range(4)]
        await wait_until(open_count(4), what="the idle connections")
        async with await anyio.connect_tcp("127.0.0.1", endpoint.port) as extra:
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                await extra.receive()
        assert endpoint.statistics().refused == 1
        for stream in idle:
            await stream.aclose()
        await wait_until(open_count(0), what="the idle connections to close")
        ok = await _get(endpoint.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert ok.startswith(b"HTTP/1.0 200")
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
    with pytest.raises(
        ConfigError, match=r"^metrics_address no-such-host\.invalid:1: cannot resolve"
    ):
        await listen("no-such-host.invalid:1")


async def test_endpoint_on_a_given_listener_serves_again_after_a_restart() -> None:
    """Given a bound listener, the endpoint serves on it and leaves it open when it stops,
    so the supervisor's restart serves the same socket again with no new bind."""
    listener = await listen("127.0.0.1:0")
    endpoint = HttpEndpoint(Registry(), "127.0.0.1:0", listener=listener)
    async with listener:
        for _ in range(2):  # first start, then a restart of the actor
            async with anyio.create_task_group() as tg:
                await tg.start(endpoint.run)
                assert endpoint.port
                ok = await _get(endpoint.port, b"GET /healthz HTTP/1.0\r\n\r\n")
                assert ok.startswith(b"HTTP/1.0 200")
                tg.cancel_scope.cancel()


@pytest.fixture
def anyio_backend() -> str:
    """These tests run on asyncio only."""
    return "asyncio"


async def test_readyz_answers_503_with_the_dependencies_away_while_degraded() -> None:
    """/readyz: 200 when ready, 503 with the degraded state as JSON; /healthz stays 200."""
    health = Health()
    endpoint = HttpEndpoint(Registry(), "127.0.0.1:0", ready=health.state)
    async with anyio.create_task_group() as tg:
        await tg.start(endpoint.run)
        assert endpoint.port
        ready = await _get(endpoint.port, b"GET /readyz HTTP/1.0\r\n\r\n")
        assert ready.startswith(b"HTTP/1.0 200")
        health.report("timer", "nats", "request to x: timeout")
        degraded = await _get(endpoint.port, b"GET /readyz HTTP/1.0\r\n\r\n")
        assert degraded.startswith(b"HTTP/1.0 503")
        body = json.loads(degraded.partition(b"\r\n\r\n")[2])
        assert body["state"] == "degraded"
        assert body["degraded"] == {"nats": "request to x: timeout"}
        alive = await _get(endpoint.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert alive.startswith(b"HTTP/1.0 200")
        health.clear("timer")
        again = await _get(endpoint.port, b"GET /readyz HTTP/1.0\r\n\r\n")
        assert again.startswith(b"HTTP/1.0 200")
        tg.cancel_scope.cancel()
