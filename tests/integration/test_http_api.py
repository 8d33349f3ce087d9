"""The HTTP JSON API: the wire verbs under /api/, their errors, authentication, and the
checks against cross-site requests, served by uvicorn in the App's own loop."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

import stemd
from stemd import _wire as wire
from stemd._actors.http import HttpEndpoint
from stemd._web import Web
from stemd._web.listing import RunLister
from stemd._web.openapi import openapi_document
from tests.helpers import HttpReply, http, open_app, wait_status

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

pytestmark = pytest.mark.anyio

approvals = stemd.Flow("http.approvals")


@approvals.step("draft")
async def draft(ctx: stemd.FlowContext) -> str:
    """Returns the document id of the params."""
    return str(ctx.params["doc"])


@approvals.step("review")
async def review(ctx: stemd.FlowContext) -> str:
    """Waits for a decision on ``http.decision``."""
    decision = await ctx.wait_for_event("http.decision")
    return f"{ctx.previous_result}:{decision['by']}"


TOKEN = "s3cret-token-0123456789"


class Client:
    """Requests to one served Web."""

    def __init__(self, base: str) -> None:
        self.base = base

    async def get(self, path: str, **headers: str) -> HttpReply:
        return await http(self.base + path, headers=headers)

    async def post(self, path: str, body: Any = None, **headers: str) -> HttpReply:
        data = json.dumps(body if body is not None else {}).encode()
        return await http(
            self.base + path,
            "POST",
            data,
            {"Content-Type": "application/json", **headers},
        )


@asynccontextmanager
async def served(app: stemd.App, **options: Any) -> AsyncIterator[Client]:
    """``app``'s Web on a free port, as the daemon serves it."""
    web = Web(
        app, observers=app.engine.observers, lister=RunLister(app.store, app.codec), **options
    )
    endpoint = HttpEndpoint(web.asgi, "127.0.0.1:0", on_stop=web.close)
    async with anyio.create_task_group() as tg:
        await tg.start(endpoint.run)
        yield Client(f"http://127.0.0.1:{endpoint.port}")
        tg.cancel_scope.cancel()


async def test_every_verb_answers_over_http_as_over_nats() -> None:
    """start, get, list (paged), waiting, send, emit, cancel, rewind and types answer with
    the wire's replies, through POST /api/<verb> and the resource routes."""
    async with open_app(approvals) as app, served(app) as api:
        started = await api.post(
            "/api/start", {"workflow": "http.approvals", "params": {"doc": "d1"}, "run_id": "r1"}
        )
        assert (started.status_code, started.json()) == (200, {"run_id": "r1", "created": True})
        for n in (2, 3):
            reply = await api.post(
                "/api/start",
                {"workflow": "http.approvals", "params": {"doc": f"d{n}"}, "run_id": f"r{n}"},
            )
            assert reply.status_code == 200
        for run_id in ("r1", "r2", "r3"):
            await wait_status(app, run_id, stemd.RunStatus.SUSPENDED)

        run = (await api.get("/api/runs/r1")).json()["run"]
        assert (run["status"], run["wait_topic"]) == ("suspended", "http.decision")
        assert (await api.post("/api/get", {"run_id": "r1"})).json()["run"]["run_id"] == "r1"

        first = (await api.get("/api/runs?limit=2")).json()
        assert [r["run_id"] for r in first["runs"]] == ["r3", "r2"]
        rest = (await api.get(f"/api/runs?limit=2&after={first['next']}")).json()
        assert [r["run_id"] for r in rest["runs"]] == ["r1"]
        assert "next" not in rest
        waiting = (await api.get("/api/topics/http.decision/waiting")).json()
        assert [r["run_id"] for r in waiting["runs"]] == ["r1", "r2", "r3"]

        sent = await api.post(
            "/api/runs/r1/send", {"topic": "http.decision", "payload": {"by": "ana"}}
        )
        assert sent.json() == {"accepted": True}
        await wait_status(app, "r1", stemd.RunStatus.COMPLETED)
        assert (await app.get_run("r1")).result == "d1:ana"  # type: ignore[union-attr]

        assert (await api.post("/api/runs/r2/cancel", {"reason": "no"})).json() == {
            "cancelled": True
        }
        emitted = await api.post("/api/emit", {"topic": "http.decision", "payload": {"by": "bo"}})
        assert emitted.json() == {"resumed": 1}
        await wait_status(app, "r3", stemd.RunStatus.COMPLETED)

        rewound = await api.post("/api/runs/r3/rewind", {"step": "review"})
        assert rewound.json() == {"rewound": True}
        types = (await api.get("/api/types")).json()["workflows"]
        assert [(t["name"], t["steps"]) for t in types] == [("http.approvals", ["draft", "review"])]


async def test_bad_requests_get_the_wire_error_codes_and_change_nothing() -> None:
    """Malformed JSON, wrong fields, unknown workflows, runs and verbs are JSON errors with
    the wire's codes and matching HTTP statuses; no run is created."""
    async with open_app(approvals) as app, served(app) as api:
        cases: list[tuple[HttpReply, int, str]] = [
            (await api.post("/api/start", {"workflow": "nope"}), 404, "unknown_workflow"),
            (
                await api.post("/api/start", {"workflow": "http.approvals", "x": 1}),
                400,
                "bad_request",
            ),
            (
                await api.post("/api/start", {"workflow": "http.approvals", "run_id": "a b"}),
                400,
                "bad_request",
            ),
            (await api.get("/api/runs/missing"), 404, "not_found"),
            (await api.get("/api/runs?limit=0"), 400, "bad_request"),
            (await api.get("/api/runs?status=sleeping"), 400, "bad_request"),
            (await api.post("/api/frobnicate"), 404, "not_found"),
            (await api.get("/api/cancel"), 405, "method_not_allowed"),
            (await api.post("/api/runs/missing/rewind", {"step": "draft"}), 200, ""),
        ]
        raw = await http(
            api.base + "/api/start", "POST", b"{not json", {"Content-Type": "application/json"}
        )
        cases.append((raw, 400, "bad_request"))
        for reply, status, code in cases:
            assert reply.status_code == status, reply.text
            if code:
                error = reply.json()["error"]
                assert error["code"] == code
                assert error["message"]
        assert await app.list_runs() == []


async def test_tokens_are_required_when_configured() -> None:
    """With http_tokens, the API needs the bearer token (401 otherwise) and the pages
    send to the sign-in page, whose cookie then opens them; health stays open."""
    async with open_app(approvals) as app, served(app, tokens=[TOKEN]) as api:
        refused = await api.get("/api/types")
        assert (refused.status_code, refused.json()["error"]["code"]) == (401, "unauthorized")
        wrong = await api.get("/api/types", Authorization="Bearer nope")
        assert wrong.status_code == 401
        assert (await api.get("/api/types", Authorization=f"Bearer {TOKEN}")).status_code == 200
        assert (await api.get("/healthz")).status_code == 200
        page = await api.get("/runs")
        assert (page.status_code, page.headers["location"]) == (303, "/login?next=/runs")
        form = f"token={TOKEN}".encode()
        login = await http(
            api.base + "/login?next=/runs",
            "POST",
            form,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert login.status_code == 303
        cookie = login.headers["set-cookie"].split(";")[0]
        assert TOKEN not in cookie
        assert (await api.get("/runs", Cookie=cookie)).status_code == 200
        # A state change by cookie needs the page's CSRF token.
        body = {"workflow": "http.approvals", "params": {"doc": "d"}}
        assert (await api.post("/api/start", body, Cookie=cookie)).status_code == 403
        page_html = (await api.get("/runs", Cookie=cookie)).text
        csrf = page_html.split('name="csrf-token" content="')[1].split('"')[0]
        ok = await api.post("/api/start", body, Cookie=cookie, **{"X-CSRF-Token": csrf})
        assert ok.status_code == 200, ok.text


async def test_cross_site_requests_are_refused() -> None:
    """A POST that is not JSON, comes from another Origin, or names a Host that is not
    loopback (DNS rebinding) is refused with 403 and changes nothing."""
    async with open_app(approvals) as app, served(app) as api:
        body = {"workflow": "http.approvals", "params": {"doc": "d"}}
        form = await http(
            api.base + "/api/start",
            "POST",
            json.dumps(body).encode(),
            {"Content-Type": "text/plain"},
        )
        evil = await api.post("/api/start", body, Origin="https://evil.example")
        rebound = await api.post("/api/start", body, Host="evil.example:8080")
        for reply in (form, evil, rebound):
            assert (reply.status_code, reply.json()["error"]["code"]) == (403, "forbidden")
        assert await app.list_runs() == []
        same = await api.post("/api/start", body, Origin=api.base)
        assert same.status_code == 200


def test_the_openapi_document_covers_every_verb() -> None:
    """The generated OpenAPI document has a path per wire verb and schemas of their
    requests, replies and the error reply."""
    doc = openapi_document()
    assert doc["openapi"].startswith("3.1")
    for verb, typ in wire.REQUEST_TYPES.items():
        assert f"/api/{verb}" in doc["paths"]
        assert typ.__name__ in doc["components"]["schemas"]
        assert wire.REPLY_TYPES[verb].__name__ in doc["components"]["schemas"]
    assert "ErrorReply" in doc["components"]["schemas"]
    assert "/api/runs/{run_id}/cancel" in doc["paths"]
    assert "/api/runs/{run_id}/start" not in doc["paths"]


def test_the_documented_openapi_document_is_current() -> None:
    """docs/reference/openapi.json is what the code generates (regenerate it with
    ``python -c "import json; from stemd._web.openapi import openapi_document as d;
    print(json.dumps(d(), indent=2))" > docs/reference/openapi.json``)."""
    path = Path(__file__).resolve().parents[2] / "docs" / "reference" / "openapi.json"
    assert json.loads(path.read_text()) == openapi_document()


async def test_dashboard_pages_filter_search_and_refuse_bad_input() -> None:
    """The pages render; the runs list filters by workflow, status, topic and time, pages
    with a cursor, sends a search by run id to the run; bad filters are a 400 page."""
    async with open_app(approvals) as app, served(app) as api:
        for n in range(3):
            body = {"workflow": "http.approvals", "params": {"doc": n}, "run_id": f"p{n}"}
            assert (await api.post("/api/start", body)).status_code == 200
        for n in range(3):
            await wait_status(app, f"p{n}", stemd.RunStatus.SUSPENDED)
        for path in ("/", "/runs", "/topics", "/workflows", "/runs/p1"):
            page = await api.get(path)
            assert page.status_code == 200, path
        listed = (await api.get("/runs?status=suspended&workflow=http.approvals&since=1h")).text
        assert all(f'href="/runs/p{n}"' in listed for n in range(3))
        assert 'href="/runs/p0"' in (await api.get("/runs?topic=http.decision")).text
        assert 'href="/runs/p0"' not in (await api.get("/runs?status=completed")).text
        assert 'href="/runs/p0"' not in (await api.get("/runs?until=2000-01-01")).text
        found = await api.get("/runs?q=p2")
        assert (found.status_code, found.headers["location"]) == (303, "/runs/p2")
        assert (await api.get("/runs?q=nope")).status_code == 404
        assert (await api.get("/runs?since=yesterday-ish")).status_code == 400
        assert (await api.get("/runs?status=sleeping")).status_code == 400
        assert (await api.get("/runs?after=x")).status_code == 400
        assert (await api.get("/runs/nope")).status_code == 404
        assert "http.decision" in (await api.get("/topics")).text
