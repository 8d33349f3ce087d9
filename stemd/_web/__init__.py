"""The daemon's HTTP application (Starlette): metrics, health, the JSON API, the dashboard.

========================  =======================================================
``/metrics``              Prometheus text (``prometheus_client``)
``/healthz``              200 while the daemon lives and its last check passed
``/readyz``               200 once it serves: workers up, the store answers
``/api/…``                the wire verbs (:mod:`stemd._web.api`)
``/api/openapi.json``     their OpenAPI document (:mod:`stemd._web.openapi`)
``/``, ``/runs``, …       the dashboard (:mod:`stemd._web.pages`)
========================  =======================================================

:class:`Web` puts them together behind the checks of :mod:`stemd._web.security`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from stemd._actors.api import ApiResponder
from stemd._web.api import api_routes, error_response
from stemd._web.live import ChangeHub
from stemd._web.openapi import openapi_document
from stemd._web.pages import Dashboard
from stemd._web.security import Guard
from stemd._web.views import EndedPerMinute

if TYPE_CHECKING:
    from collections.abc import Iterable

    from prometheus_client import CollectorRegistry
    from starlette.types import ASGIApp, Receive, Scope, Send

    from stemd._engine.observer import Observers
    from stemd._health import HealthState
    from stemd._operations import Operations
    from stemd._web.listing import RunLister

__all__ = ["Web"]

Check = Callable[[], Awaitable[tuple[bool, str]]]


async def _always() -> tuple[bool, str]:
    return True, "ok"


class Web:
    """The ASGI application of one daemon (:attr:`asgi`).

    Args:
        ops: the operations the API and the actions call (the App).
        observers: the engine's observers, which the live updates join (``None``: pages
            are not told of changes, they re-read on their own).
        registry: the metrics to serve (``None``: no ``/metrics``).
        healthy: the liveness check of ``/healthz``.
        ready: the readiness check of ``/readyz``.
        health: the daemon's dependency health (``None``: not tracked); while it is
            degraded, ``/readyz`` answers 503 with it as JSON.
        tokens: the bearer tokens (none: no authentication).
        loopback: whether the server is bound to a loopback address only.
        api: serve the API and the dashboard (``False``: metrics and health only).
        lister: reads the dashboard's lists without checkpoints (``None``: through
            ``ops.page_runs``, which reads them too).
    """

    def __init__(
        self,
        ops: Operations,
        *,
        observers: Observers | None = None,
        registry: CollectorRegistry | None = None,
        healthy: Check = _always,
        ready: Check = _always,
        tokens: Iterable[str] = (),
        loopback: bool = True,
        api: bool = True,
        lister: RunLister | None = None,
        health: Callable[[], HealthState] | None = None,
    ) -> None:
        self.ops = ops
        self.health = health
        self.registry = registry
        self.healthy = healthy
        self.ready = ready
        self.guard = Guard(tokens, loopback=loopback)
        self.hub = ChangeHub()
        self.ended = EndedPerMinute()
        self._unsubscribe: list[Callable[[], None]] = []
        if observers is not None:
            self._unsubscribe = [observers.subscribe(self.hub), observers.subscribe(self.ended)]
        routes: list[Any] = [
            Route("/healthz", self._healthz),
            Route("/readyz", self._readyz),
            Route("/metrics", self._metrics),
        ]
        if api:
            routes.append(Route("/api/openapi.json", self._openapi))
            routes += api_routes(ApiResponder(ops, None))
            routes += Dashboard(ops, self.hub, self.ended, self.guard, lister).routes()
        self.asgi: ASGIApp = _Guarded(Starlette(routes=routes), self.guard)

    def close(self) -> None:
        """End the live streams and leave the engine's observers (the server stops)."""
        self.hub.close()
        for stop in self._unsubscribe:
            stop()
        self._unsubscribe = []

    async def _healthz(self, request: Request) -> Response:
        ok, why = await self.healthy()
        return PlainTextResponse(("ok" if ok else why) + "\n", 200 if ok else 503)

    async def _readyz(self, request: Request) -> Response:
        if self.health is not None:
            state = self.health()
            if not state.ready:  # degraded: which dependencies are away, as JSON
                return Response(
                    msgspec.json.encode(state) + b"\n", 503, media_type="application/json"
                )
        ok, why = await self.ready()
        return PlainTextResponse(("ready" if ok else why) + "\n", 200 if ok else 503)

    async def _metrics(self, request: Request) -> Response:
        if self.registry is None:
            return PlainTextResponse("no metrics\n", 404)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from stemd._observe import refresh_metrics

        await refresh_metrics(self.registry)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def _openapi(self, request: Request) -> Response:
        return JSONResponse(openapi_document())


class _Guarded:
    """The ASGI middleware that applies :class:`Guard` to every request."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refused = self._refusal(request)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, request: Request) -> Response | None:
        guard = self.guard
        path = request.url.path
        if not guard.host_ok(request):
            return error_response("forbidden", "this server answers only to a loopback Host")
        if guard.open_path(path):
            origin = request.headers.get("origin")
            if request.method == "POST" and origin is not None:
                own = f"{request.url.scheme}://{request.headers.get('host', '')}"
                if origin != own:
                    return error_response("forbidden", f"cross-origin request from {origin}")
            return None
        identity = guard.identity(request)
        if identity is None:
            if path.startswith("/api/") or path.startswith("/events/"):
                return error_response(
                    "unauthorized", "missing or wrong bearer token (Authorization: Bearer …)"
                )
            return RedirectResponse("/login?next=" + _quote(path), status_code=303)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            why = guard.cross_site(request, identity)
            if why is not None:
                return error_response("forbidden", why)
        return None


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")
