"""The OpenAPI 3 document of the admin API (`GET /openapi.json`), collected from the route groups.

Every route-group factory returns a `RouteGroup` with `openapi={"/path/{param}": {"get": {<operation>}}}`; this module
merges those declarations into one document and holds the declarations of the built-in health,
status and cache groups, plus the schema helpers the other groups use."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_frontends import version
from lmcache_frontends.admin.groups import route_groups

OPENAPI_VERSION = "3.0.3"
TITLE = "LMCache server admin API"

_RULE_PARAM_RE = re.compile(r"<(?:[a-zA-Z_][a-zA-Z0-9_]*(?:\([^)]*\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>")

_REASONS = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    422: "Request body fails validation",
    500: "Internal error",
    501: "Not implemented",
    503: "Engine not initialized",
}

# ---------------------------------------------------------------------- schema helpers

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


DETAIL_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["detail", "error"],
    "properties": {
        "detail": {
            "description": "LMCache 0.5.6's field: a message, or (422) a list of problems",
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string"},
                            "loc": {"type": "array", "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}},
                            "msg": {"type": "string"},
                            "input": {},
                        },
                    },
                },
            ],
        },
        "error": {"type": "string"},
    },
}


def rule_to_openapi_path(rule: str) -> str:
    """`/quota/<salt>` or `/x/<path:rest>` -> `/quota/{salt}`, `/x/{rest}`."""
    return _RULE_PARAM_RE.sub(r"{\1}", rule)


def obj(properties: Mapping[str, Any], *, required: Iterable[str] | None = None, extra: bool = True) -> dict[str, Any]:
    """An object schema; every listed property is required unless `required` says otherwise."""
    schema: dict[str, Any] = {"type": "object", "properties": dict(properties)}
    req = list(properties) if required is None else list(required)
    if req:
        schema["required"] = req
    if not extra:
        schema["additionalProperties"] = False
    return schema


def json_response(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": dict(schema)}}}


def text_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def error_responses(*codes: int, **schemas: Mapping[str, Any]) -> dict[str, Any]:
    """JSON error responses for `codes`; `schemas` overrides one (key `e503` etc.)."""
    out: dict[str, Any] = {}
    for code in codes:
        schema = schemas.get(f"e{code}", ERROR_SCHEMA)
        out[str(code)] = json_response(_REASONS.get(code, "Error"), schema)
    return out


TIER_SCHEMA: dict[str, Any] = {"type": "string", "enum": ["l1", "l2", "all"]}
"""A `tier` of LMCache 0.5.6's bodies and queries."""


def adapters_document(**item: Mapping[str, Any]) -> dict[str, Any]:
    """`{"adapters": [{index, <item fields>}]}`: an adapter inventory's answer."""
    return obj({"adapters": {"type": "array", "items": obj({"index": {"type": "integer"}, **item})}})


def page_schema(key: Mapping[str, Any], **extra: Mapping[str, Any]) -> dict[str, Any]:
    """One page of an L2 listing: `adapter`, `extra` fields, `entries` and `next_page_token`."""
    return obj(
        {
            "adapter": {"type": "string"},
            **extra,
            "entries": {"type": "array", "items": obj({"key": key, "size_bytes": {"type": "integer", "nullable": True}})},
            "next_page_token": {"type": "string", "nullable": True},
        }
    )


def detail_error_responses(*codes: int) -> dict[str, Any]:
    """Error responses of LMCache 0.5.6's routes: `detail` (and `error`) for every code."""
    return error_responses(*codes, **{f"e{code}": DETAIL_ERROR_SCHEMA for code in codes})


def query_param(name: str, description: str, schema: Mapping[str, Any] | None = None, *, required: bool = False) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": dict(schema or {"type": "string"}),
    }


def path_param(name: str, description: str, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": dict(schema or {"type": "string"})}


def json_body(schema: Mapping[str, Any], *, required: bool = True, description: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"required": required, "content": {"application/json": {"schema": dict(schema)}}}
    if description:
        body["description"] = description
    return body


# ---------------------------------------------------------------------- the document


def collect(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of `app`: the declarations of every mounted route group, merged.
    Two groups declaring the same path and method keep the first (registration order)."""
    paths: dict[str, dict[str, Any]] = {}
    for group in route_groups(app).values():
        for path, operations in group.openapi.items():
            slot = paths.setdefault(path, {})
            for method, operation in operations.items():
                slot.setdefault(method.lower(), copy.deepcopy(operation))
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": TITLE,
            "version": version.package_version() or "0",
            "description": "Operator API of lmcache-server; see docs/http-api.md.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": {"Error": copy.deepcopy(ERROR_SCHEMA)}},
    }


def create_openapi_blueprint(context: RouteContext) -> RouteGroup:
    """`GET /openapi.json`: the document of every route the running app serves."""
    bp = Blueprint("openapi", __name__)

    @bp.get("/openapi.json")
    def openapi_document() -> Response:
        return jsonify(collect(current_app))  # type: ignore[arg-type]

    openapi: dict[str, Any] = {
        "/openapi.json": {
            "get": {
                "summary": "This OpenAPI 3 document",
                "tags": ["meta"],
                "responses": {"200": json_response("The document", obj({"openapi": {"type": "string"}, "paths": {"type": "object"}}))},
            }
        }
    }
    return RouteGroup(bp, openapi=openapi)


# ---------------------------------------------------------------------- built-in groups

_ENGINE_503_REASON = obj({"status": {"type": "string"}, "reason": {"type": "string"}, "error": {"type": "string"}})
_SALT_PARAM = query_param(
    "cache_salt",
    "Only this tenant (`_default` = the empty salt). At most 128 characters; no `@`, `/`, `\\` or NUL.",
)
_MODEL_PARAM = query_param("model_name", "Only this model (non-empty, no `@`).")

HEALTH_OPENAPI: dict[str, Any] = {
    path: {
        "get": {
            "summary": summary,
            "tags": ["health"],
            "responses": responses,
        }
    }
    for path, summary, responses in (
        (
            "/",
            "Static liveness ping (does not touch the engine)",
            {"200": json_response("The HTTP server is up", obj({"status": {"type": "string", "enum": ["ok"]}, "service": {"type": "string"}}))},
        ),
        *(
            (
                p,
                "Kubernetes liveness/readiness probe",
                {
                    "200": json_response("The engine is initialized", obj({"status": {"type": "string", "enum": ["healthy"]}})),
                    **error_responses(503, e503=_ENGINE_503_REASON),
                },
            )
            for p in ("/healthcheck", "/api/healthcheck")
        ),
    )
}

_STATUS_TREE = {
    "type": "object",
    "required": ["is_healthy"],
    "properties": {
        "is_healthy": {"type": "boolean"},
        "engine_type": {"type": "string"},
        "chunk_size": {"type": "integer"},
        "hash_algorithm": {"type": "string"},
        "active_sessions": {"type": "integer"},
        "storage_manager": {"type": "object", "properties": {"is_healthy": {"type": "boolean"}}},
    },
}

STATUS_OPENAPI: dict[str, Any] = {
    **{
        p: {
            "get": {
                "summary": "The engine's status tree",
                "tags": ["status"],
                "responses": {"200": json_response("Status tree", _STATUS_TREE), **error_responses(503)},
            }
        }
        for p in ("/status", "/api/status")
    },
    "/conf": {
        "get": {
            "summary": "The configuration the process runs with (secrets redacted)",
            "tags": ["status"],
            "responses": {
                "200": json_response(
                    "Configuration by section",
                    obj({"mp": {"type": "object"}, "storage_manager": {"type": "object"}, "observability": {"type": "object"}, "coordinator": {"type": "object"}}),
                ),
                **error_responses(503),
            },
        }
    },
    **{
        p: {
            "get": {
                "summary": summary,
                "tags": ["status"],
                "responses": {"200": json_response("A bare JSON string", {"type": "string"})},
            }
        }
        for p, summary in (
            ("/version", "Combined version `<version>-<commit_id>`"),
            ("/lmc_version", "Package version"),
            ("/commit_id", "Build commit id"),
        )
    },
}

CACHE_OPENAPI: dict[str, Any] = {
    p: {
        "post": {
            "summary": "Drop KV data from L1 (all, one tenant or one model)",
            "tags": ["cache"],
            "parameters": [_SALT_PARAM, _MODEL_PARAM],
            "responses": {
                "200": json_response("Cleared", obj({"status": {"type": "string", "enum": ["ok"]}})),
                **error_responses(400, 413, 503, e400=_ENGINE_503_REASON, e503=_ENGINE_503_REASON),
            },
        }
    }
    for p in ("/clear-cache", "/api/clear-cache")
}
