"""The HTTP JSON API: the wire protocol's verbs (stemd._wire) under ``/api/``.

Every verb of :data:`stemd._wire.REQUEST_TYPES` is ``POST /api/<verb>`` with the verb's
request as the JSON body, answered by the same code that answers ``<prefix>.api.<verb>``
over NATS (:meth:`stemd._actors.api.ApiResponder.handle`): the same validation, replies
and error codes. A verb added to the wire protocol is served here with no more work.

Resource-style routes map onto the same verbs:

- ``GET /api/runs`` (``list``; query ``workflow``, ``status``, ``limit``, ``after``),
  ``GET /api/runs/{run_id}`` (``get``), ``GET /api/types`` (``types``),
  ``GET /api/topics/{topic}/waiting`` (``waiting``; ``limit``, ``after``);
- ``POST /api/runs/{run_id}/<verb>`` for every verb whose request has a ``run_id``
  (``cancel``, ``rewind``, ``send``…): the body's fields plus the path's run id.

An error reply is ``{"error": {"code", "message"}}`` with the wire's codes and the HTTP
status of :data:`STATUS` (401 ``unauthorized`` and 403 ``forbidden`` come from the
server's own checks); nothing was changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from starlette.responses import Response
from starlette.routing import Route

from stemd import _wire as wire

if TYPE_CHECKING:
    from starlette.requests import Request

    from stemd._actors.api import ApiResponder

__all__ = ["GET_VERBS", "STATUS", "api_routes", "error_response", "run_verbs"]

STATUS: dict[str, int] = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "unknown_workflow": 404,
    "method_not_allowed": 405,
    "too_large": 413,
    "internal": 500,
}

# The verbs that only read, also served as GET with their fields in the query string.
GET_VERBS = ("get", "list", "waiting", "types")
MAX_BODY = 1024 * 1024

_JSON = "application/json"


def error_response(code: str, message: str, status: int | None = None) -> Response:
    """The JSON error reply ``{"error": {"code", "message"}}``."""
    body = msgspec.json.encode({"error": {"code": code, "message": message}})
    return Response(body, status_code=status or STATUS.get(code, 400), media_type=_JSON)


def run_verbs() -> list[str]:
    """The verbs whose request names one run (``run_id``), in the wire's order."""
    return [
        verb
        for verb, typ in wire.REQUEST_TYPES.items()
        if verb not in GET_VERBS
        and any(f.name == "run_id" and f.required for f in msgspec.structs.fields(typ))
    ]


class _Api:
    def __init__(self, responder: ApiResponder) -> None:
        self.responder = responder

    async def call(self, verb: str, body: bytes, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k == "traceparent"}
        reply = await self.responder.handle(verb, body, headers)
        status = 200
        if reply.startswith(b'{"error":'):
            decoded = wire.decode_reply(verb, reply)
            if isinstance(decoded, wire.ErrorReply):
                status = STATUS.get(decoded.error.code, 400)
        return Response(reply, status_code=status, media_type=_JSON)

    async def _body(self, request: Request) -> bytes | Response:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY:
            return error_response("too_large", f"the body is larger than {MAX_BODY} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return error_response("too_large", f"the body is larger than {MAX_BODY} bytes")
        return body

    async def post_verb(self, request: Request) -> Response:
        verb = request.path_params["verb"]
        if verb not in wire.REQUEST_TYPES:
            return error_response(
                "not_found", f"unknown verb {verb!r} (one of {', '.join(wire.VERBS)})"
            )
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        return await self.call(verb, body, request)

    async def get_verb(self, request: Request, verb: str, **fields: Any) -> Response:
        query: dict[str, Any] = dict(request.query_params)
        query.update(fields)
        try:
            req = msgspec.convert(query, wire.REQUEST_TYPES[verb], strict=False)
        except msgspec.ValidationError as exc:
            return error_response("bad_request", f"invalid request: {exc}")
        return await self.call(verb, wire.encode(req), request)

    async def run_verb(self, request: Request) -> Response:
        verb = request.path_params["verb"]
        if verb not in run_verbs():
            return error_response("not_found", f"no verb {verb!r} on a run")
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        try:
            fields = msgspec.json.decode(body or b"{}")
        except msgspec.DecodeError as exc:
            return error_response("bad_request", f"malformed request: {exc}")
        if not isinstance(fields, dict):
            return error_response("bad_request", "the body must be a JSON object")
        fields["run_id"] = request.path_params["run_id"]
        return await self.call(verb, msgspec.json.encode(fields), request)

    async def list_runs(self, request: Request) -> Response:
        return await self.get_verb(request, "list")

    async def get_run(self, request: Request) -> Response:
        return await self.get_verb(request, "get", run_id=request.path_params["run_id"])

    async def types(self, request: Request) -> Response:
        return await self.get_verb(request, "types")

    async def waiting(self, request: Request) -> Response:
        return await self.get_verb(request, "waiting", topic=request.path_params["topic"])

    async def get_any(self, request: Request) -> Response:
        verb = request.path_params["verb"]
        if verb not in GET_VERBS:
            if verb in wire.REQUEST_TYPES:
                return error_response("method_not_allowed", f"{verb} takes POST")
            return error_response("not_found", f"unknown verb {verb!r}")
        return await self.get_verb(request, verb)


def api_routes(responder: ApiResponder) -> list[Route]:
    """The routes of the API, answered by ``responder``."""
    api = _Api(responder)
    return [
        Route("/api/runs", api.list_runs, methods=["GET"]),
        Route("/api/runs/{run_id}", api.get_run, methods=["GET"]),
        Route("/api/runs/{run_id}/{verb}", api.run_verb, methods=["POST"]),
        Route("/api/types", api.types, methods=["GET"]),
        Route("/api/topics/{topic}/waiting", api.waiting, methods=["GET"]),
        Route("/api/{verb}", api.post_verb, methods=["POST"]),
        Route("/api/{verb}", api.get_any, methods=["GET"]),
    ]
