"""Warm prefetch routes (LMCache 0.5.6): `POST /cache/prefetches` loads a prompt's chunks from L2
into L1 before its request arrives; `GET /cache/prefetches/<request_id>` polls the job."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from lmcache_core.cache_ops import Tier
from lmcache_core.cache_ops.prefetch import COMPLETED, MAX_TOKEN_IDS, PENDING
from lmcache_core.errors import LMCacheError
from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import cache_operations, domain_error
from lmcache_frontends.admin.openapi import (
    TIER_SCHEMA,
    detail_error_responses,
    json_body,
    json_response,
    obj,
    path_param,
)
from lmcache_frontends.admin.wire import (
    SERVER_NOT_INITIALIZED,
    Field,
    accept_change,
    detail_error,
    enum_values,
)

PREFETCH_FIELDS = (
    Field("model_name", "str"),
    Field("world_size", "int"),
    Field("token_ids", "int_list"),
    Field("cache_salt", "str", default=""),
    Field("source_tier", "enum", default="l2", choices=enum_values(Tier)),
    Field("target_tier", "enum", default="l1", choices=enum_values(Tier)),
)


def create_prefetches_blueprint(context: RouteContext) -> RouteGroup:
    """Submit and poll warm prefetches (L2 -> L1)."""
    bp = Blueprint("prefetches", __name__)

    @bp.post("/cache/prefetches")
    def submit() -> Response:
        accepted = accept_change(context, "cache-prefetch", PREFETCH_FIELDS, "PrefetchRequest")
        if isinstance(accepted, Response):
            return accepted
        body, ops = accepted
        assert body is not None
        what = {"model_name": body["model_name"], "world_size": body["world_size"], "tokens": len(body["token_ids"])}
        try:
            submitted = ops.prefetch.submit(
                body["model_name"],
                body["world_size"],
                body["token_ids"],
                body["cache_salt"],
                source=Tier(body["source_tier"]),
                target=Tier(body["target_tier"]),
            )
        except LMCacheError as exc:
            audit("cache-prefetch", "rejected", reason=str(exc), **what)
            return domain_error(exc, detail=True)
        reply: dict[str, Any] = {"chunks": submitted.chunks, "status": submitted.status}
        if submitted.request_id is not None:
            reply = {"request_id": submitted.request_id, **reply}
        audit("cache-prefetch", submitted.status, request_id=submitted.request_id, chunks=submitted.chunks, **what)
        response = jsonify(reply)
        response.status_code = 202
        return response

    @bp.get("/cache/prefetches/<request_id>")
    def poll(request_id: str) -> Response:
        ops = cache_operations(context)
        if ops is None:
            return detail_error(503, SERVER_NOT_INITIALIZED)
        try:
            status = ops.prefetch.status(request_id)
        except LMCacheError as exc:
            return domain_error(exc, detail=True)
        if status.state == COMPLETED:
            return jsonify(
                request_id=status.request_id, status=status.state, found_keys=status.found_keys, total_keys=status.total_keys
            )
        return jsonify(request_id=status.request_id, status=status.state)

    return RouteGroup(bp, openapi=_OPENAPI)


# ---------------------------------------------------------------------- OpenAPI


_OPENAPI: dict[str, Any] = {
    "/cache/prefetches": {
        "post": {
            "summary": "Warm L1 from L2 with a prompt's chunks before its request arrives (LMCache 0.5.6)",
            "tags": ["cache"],
            "requestBody": json_body(
                obj(
                    {
                        "model_name": {"type": "string"},
                        "world_size": {"type": "integer", "minimum": 1},
                        "token_ids": {"type": "array", "maxItems": MAX_TOKEN_IDS, "items": {"type": "integer", "minimum": 0}},
                        "cache_salt": {"type": "string", "default": ""},
                        "source_tier": {**TIER_SCHEMA, "default": "l2"},
                        "target_tier": {**TIER_SCHEMA, "default": "l1"},
                    },
                    required=["model_name", "world_size", "token_ids"],
                )
            ),
            "responses": {
                "202": json_response(
                    "Submitted (`noop` without `request_id` for a prompt shorter than one chunk)",
                    obj(
                        {
                            "request_id": {"type": "string"},
                            "chunks": {"type": "integer"},
                            "status": {"type": "string", "enum": ["submitted", "noop"]},
                        },
                        required=["chunks", "status"],
                    ),
                ),
                **detail_error_responses(400, 413, 422, 503),
            },
        }
    },
    "/cache/prefetches/{request_id}": {
        "get": {
            "summary": "Poll a warm prefetch; `completed` is answered once, then the id is forgotten",
            "tags": ["cache"],
            "parameters": [path_param("request_id", "The id `POST /cache/prefetches` returned")],
            "responses": {
                "200": json_response(
                    "Pending, or completed with the keys now in L1",
                    obj(
                        {
                            "request_id": {"type": "string"},
                            "status": {"type": "string", "enum": [PENDING, COMPLETED]},
                            "found_keys": {"type": "integer"},
                            "total_keys": {"type": "integer"},
                        },
                        required=["request_id", "status"],
                    ),
                ),
                **detail_error_responses(404, 503),
            },
        }
    },
}
