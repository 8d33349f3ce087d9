"""The dashboard: server-rendered pages (jinja2) with a little JavaScript (static/app.js)
for the live updates and the actions, which go through the JSON API.

- ``/``: runs by status and workflow (the newest 500), runs ended per minute;
- ``/runs``: the runs, newest first, filtered by workflow, status, topic (runs waiting
  on it) and creation time, searched by run id, paged; the group actions (pause, resume,
  cancel the runs the filters select, with a dry run's count in the confirmation);
- ``/runs/{run_id}``: params, result, error, the timeline as a waterfall, parent and
  children, the raw RunState, and the actions (cancel, pause, resume, rewind, fork,
  emit, send);
- ``/topics``: the topics suspended runs wait on; ``/workflows``: the registered ones;
- ``/schedules``: the schedules, with their actions (pause, resume, trigger).

Every action is a ``POST`` to the JSON API, behind a confirmation, with the checks of
:mod:`stemd._web.security`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from stemd import _wire as wire
from stemd._errors import StemError
from stemd._model import RunStatus
from stemd._timefilter import in_window, parse_time
from stemd._web.live import list_stream, run_stream
from stemd._web.security import COOKIE
from stemd._web.views import counts, held_back, raw_json, waterfall

if TYPE_CHECKING:
    from datetime import datetime

    from starlette.requests import Request
    from starlette.templating import Jinja2Templates

    from stemd._model import RunPage, RunState
    from stemd._operations import Operations
    from stemd._web.listing import RunLister
    from stemd._web.live import ChangeHub
    from stemd._web.security import Guard
    from stemd._web.views import EndedPerMinute

__all__ = ["Dashboard"]

_HERE = Path(__file__).parent
_PAGE = 50
_SCAN_PAGES = 20  # pages read at most to fill one page filtered by time
_STATUSES = [s.value for s in RunStatus]
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Dashboard:
    """The pages of one server."""

    def __init__(
        self,
        ops: Operations,
        hub: ChangeHub,
        ended: EndedPerMinute,
        guard: Guard,
        lister: RunLister | None = None,
    ) -> None:
        self.ops = ops
        self.lister = lister
        self.hub = hub
        self.ended = ended
        self.guard = guard
        self._templates: Jinja2Templates | None = None

    @property
    def templates(self) -> Jinja2Templates:
        """The pages' templates, loaded with the first page served: jinja2 takes a good
        part of a tenth of a second to import, which the daemon's start does not wait for."""
        if self._templates is None:
            from starlette.templating import Jinja2Templates

            templates = Jinja2Templates(directory=str(_HERE / "templates"))
            templates.env.filters["json"] = raw_json
            templates.env.globals["statuses"] = _STATUSES
            templates.env.globals["held_back"] = held_back
            self._templates = templates
        return self._templates

    def routes(self) -> list[Route | Mount]:
        """The dashboard's routes."""
        return [
            Route("/", self.overview),
            Route("/runs", self.runs),
            Route("/runs/{run_id}", self.run),
            Route("/topics", self.topics),
            Route("/workflows", self.workflows),
            Route("/schedules", self.schedules),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/events/runs", self.list_events),
            Route("/events/runs/{run_id}", self.run_events),
            Mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static"),
        ]

    def _render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> Response:
        ctx.setdefault("csrf", self.guard.csrf_token(request))
        ctx.setdefault("signed_in", self.guard.required)
        ctx.setdefault("path", request.url.path)
        return self.templates.TemplateResponse(request, name, ctx, status_code=status)

    async def _list(
        self,
        workflow: str | None,
        status: str | None,
        limit: int,
        after: str | None,
        window: tuple[datetime | None, datetime | None] = (None, None),
    ) -> RunPage:
        since, until = window
        if self.lister is not None:
            return await self.lister.page(workflow, status, limit, after, since, until)
        return await self.ops.page_runs(
            workflow, status, limit, after=after, created_after=since, created_before=until
        )

    async def overview(self, request: Request) -> Response:
        page = await self._list(None, None, 500, None)
        by_status, by_workflow = counts(page.runs)
        series = self.ended.series()
        peak = max([1, *(ok + bad for _, ok, bad in series)])
        return self._render(
            request,
            "overview.html",
            by_status=by_status,
            by_workflow=by_workflow,
            sampled=len(page.runs),
            series=series,
            peak=peak,
            recent=page.runs[:10],
        )

    async def runs(self, request: Request) -> Response:
        q = request.query_params
        fields = {k: q.get(k) or None for k in ("workflow", "status", "topic", "after")}
        fields |= {k: q.get(k) or None for k in ("since", "until", "q")}
        ctx: dict[str, Any] = {"f": fields, "runs": [], "next": None, "error": None}
        if fields["q"]:
            found = await self._search(fields["q"])
            if found is not None:
                return RedirectResponse(f"/runs/{found.run_id}", status_code=303)
            ctx["error"] = f"no run {fields['q']!r}"
            return self._render(request, "runs.html", status=404, **ctx)
        try:
            since, until = parse_time(fields["since"]), parse_time(fields["until"])
            if fields["status"] is not None and fields["status"] not in _STATUSES:
                raise StemError(f"unknown status {fields['status']!r}")
            runs, cursor = await self._page(fields, since, until)
        except (StemError, ValueError) as exc:
            ctx["error"] = str(exc)
            return self._render(request, "runs.html", status=400, **ctx)
        ctx["runs"] = runs
        ctx["group"] = _group_filters(fields, since, until)
        if cursor is not None:
            more = {k: v for k, v in fields.items() if v and k != "after"}
            ctx["next"] = "/runs?" + urlencode({**more, "after": cursor})
        return self._render(request, "runs.html", **ctx)

    async def _search(self, text: str) -> RunState | None:
        try:
            return await self.ops.get_run(text.strip())
        except StemError:
            return None

    async def _page(
        self, f: dict[str, Any], since: datetime | None, until: datetime | None
    ) -> tuple[list[RunState], str | None]:
        if not f["topic"]:  # the list verb filters by time itself
            page = await self._list(f["workflow"], f["status"], _PAGE, f["after"], (since, until))
            return page.runs, page.next
        after = f["after"]
        found: list[RunState] = []
        for _ in range(_SCAN_PAGES):  # runs waiting on a topic, oldest first
            page = await self.ops.page_waiting(f["topic"], _PAGE, after=after)
            found += [r for r in page.runs if in_window(r, since, until)]
            after = page.next
            if len(found) >= _PAGE or after is None or (since is None and until is None):
                return found[:_PAGE], after
        return found, after

    async def run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            state = await self.ops.get_run(run_id)
        except StemError as exc:
            return self._render(request, "error.html", status=400, message=str(exc))
        if state is None:
            return self._render(request, "error.html", status=404, message=f"no run {run_id}")
        bars, span = waterfall(state)
        steps = sorted({b.step for b in bars if b.kind in ("step", "child_join")} - {""})
        partial = request.query_params.get("partial") == "1"
        return self._render(
            request,
            "run_body.html" if partial else "run.html",
            run=state,
            bars=bars,
            span=span,
            steps=steps,
            raw=raw_json(state),
            terminal=state.status.is_terminal,
        )

    async def topics(self, request: Request) -> Response:
        page = await self._list(None, "suspended", 1000, None)
        topics: dict[str, int] = {}
        for r in page.runs:
            for topic in r.wait_topics or ([r.wait_topic] if r.wait_topic else []):
                topics[topic] = topics.get(topic, 0) + 1
        return self._render(request, "topics.html", topics=sorted(topics.items()))

    async def workflows(self, request: Request) -> Response:
        types = [wire.workflow_type(w) for w in await self.ops.registered_workflows()]
        return self._render(request, "workflows.html", workflows=types)

    async def schedules(self, request: Request) -> Response:
        found = await self.ops.list_schedules()
        return self._render(request, "schedules.html", schedules=found)

    async def login(self, request: Request) -> Response:
        next_url = request.query_params.get("next", "/")
        if not next_url.startswith("/") or next_url.startswith("//"):
            next_url = "/"
        if request.method == "GET":
            return self._render(request, "login.html", next=next_url, error=None)
        form = parse_qs((await request.body())[:4096].decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        session = self.guard.session_for(token)
        if session is None:
            return self._render(request, "login.html", 401, next=next_url, error="wrong token")
        reply = RedirectResponse(next_url, status_code=303)
        reply.set_cookie(COOKIE, session, httponly=True, samesite="strict")
        return reply

    async def list_events(self, request: Request) -> Response:
        return StreamingResponse(
            list_stream(self.hub), media_type="text/event-stream", headers=_SSE_HEADERS
        )

    async def run_events(self, request: Request) -> Response:
        stream = run_stream(self.hub, self.ops, request.path_params["run_id"])
        return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)


def _group_filters(
    f: dict[str, Any], since: datetime | None, until: datetime | None
) -> dict[str, str] | None:
    """The filters of the group actions (``pause``, ``resume``, ``cancel_many``) that
    select the runs the list shows, ages resolved to instants; ``None`` for no filter (a
    group operation on every run is not offered)."""
    group = {k: f[k] for k in ("workflow", "status", "topic") if f[k]}
    if since is not None:
        group["created_after"] = since.isoformat()
    if until is not None:
        group["created_before"] = until.isoformat()
    return group or None
