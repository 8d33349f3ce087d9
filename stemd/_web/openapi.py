"""The OpenAPI 3.1 document of the HTTP API, generated from the wire protocol's msgspec
types (``msgspec.json.schema_components``): a verb added to :mod:`stemd._wire` appears in
it with no more work. Served at ``/api/openapi.json``; docs/reference/openapi.json is a
copy the tests keep current.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import msgspec

from stemd import _wire as wire
from stemd._web.api import GET_VERBS, STATUS, run_verbs

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"


def _version() -> str:
    try:
        return importlib.metadata.version("stemd")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree
        return "0"


def _ref(typ: type) -> dict[str, str]:
    return {"$ref": _REF.format(name=typ.__name__)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _responses(verb: str) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": f"the reply to {verb}"}}
    out["200"].update(_json(_ref(wire.REPLY_TYPES[verb])))
    for status in sorted({STATUS[c] for c in ("bad_request", "unauthorized", "not_found")}):
        out[str(status)] = {"description": "an error; nothing was changed"}
        out[str(status)].update(_json(_ref(wire.ErrorReply)))
    out["500"] = {"description": "the store or the transport failed"}
    out["500"].update(_json(_ref(wire.ErrorReply)))
    return out


def _doc(typ: type) -> str:
    return " ".join((typ.__doc__ or "").strip().split("\n\n")[0].split())


def _query_params(verb: str, skip: str | None = None) -> list[dict[str, Any]]:
    typ = wire.REQUEST_TYPES[verb]
    _, components = msgspec.json.schema_components([typ], ref_template=_REF)
    props = components[typ.__name__].get("properties", {})
    required = set(components[typ.__name__].get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": prop}
        for name, prop in props.items()
        if name != skip and isinstance(prop, dict) and "$ref" not in prop
    ]


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    """The document, as plain data."""
    types: list[type] = [*wire.REQUEST_TYPES.values(), *wire.REPLY_TYPES.values(), wire.ErrorReply]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    paths: dict[str, Any] = {}
    for verb, typ in wire.REQUEST_TYPES.items():
        op: dict[str, Any] = {
            "operationId": verb,
            "summary": _doc(typ),
            "requestBody": {"required": False, **_json(_ref(typ))},
            "responses": _responses(verb),
        }
        paths[f"/api/{verb}"] = {"post": op}
        if verb in GET_VERBS:
            paths[f"/api/{verb}"]["get"] = {
                "operationId": f"{verb}_get",
                "summary": _doc(typ),
                "parameters": _query_params(verb),
                "responses": _responses(verb),
            }
    paths["/api/runs"] = {
        "get": {
            "operationId": "list_runs",
            "summary": _doc(wire.ListRequest),
            "parameters": _query_params("list"),
            "responses": _responses("list"),
        }
    }
    paths["/api/runs/{run_id}"] = {
        "get": {
            "operationId": "get_run",
            "summary": _doc(wire.GetRequest),
            "parameters": [_path_param("run_id")],
            "responses": _responses("get"),
        }
    }
    paths["/api/topics/{topic}/waiting"] = {
        "get": {
            "operationId": "waiting_on_topic",
            "summary": _doc(wire.WaitingRequest),
            "parameters": [_path_param("topic"), *_query_params("waiting", skip="topic")],
            "responses": _responses("waiting"),
        }
    }
    for verb in run_verbs():
        paths[f"/api/runs/{{run_id}}/{verb}"] = {
            "post": {
                "operationId": f"run_{verb}",
                "summary": _doc(wire.REQUEST_TYPES[verb]) + " (the run id from the path)",
                "parameters": [_path_param("run_id")],
                "requestBody": {"required": False, **_json({"type": "object"})},
                "responses": _responses(verb),
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stemd HTTP API",
            "version": _version(),
            "description": "The verbs of the NATS wire protocol over HTTP, with its "
            "error codes. Authenticate with `Authorization: Bearer TOKEN` when the "
            "daemon has `http_tokens`.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }
