"""Cache-control routes of both generations over one service each: clearing L1
(`POST /clear-cache` + `/api/clear-cache`, 0.5.6's `POST /cache/clear`) and block checksums
of a registered KV cache (`GET /kvcache/check`, 0.5.6's `POST /cache/checksums`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_adapters.transfer.layout import parse_block_ids
from lmcache_core.cache_ops import Tier
from lmcache_core.cache_ops.checksums import ChecksumResult
from lmcache_core.errors import InvalidKeyError, InvalidRequestError, LMCacheError
from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_core.plugin.route_context import ENGINE_NOT_INITIALIZED
from lmcache_core.plugin.routes import READ
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import (
    INTERNAL_ERROR,
    cache_operations,
    domain_error,
    engine_not_initialized,
    json_error,
)
from lmcache_frontends.admin.openapi import (
    CACHE_OPENAPI,
    TIER_SCHEMA,
    detail_error_responses,
    error_responses,
    json_body,
    json_response,
    obj,
    query_param,
)
from lmcache_frontends.admin.params import optional_model_name, optional_salt
from lmcache_frontends.admin.wire import (
    SERVER_NOT_INITIALIZED,
    BodyInvalid,
    Field,
    accept_change,
    detail_error,
    enum_values,
    parse_body,
)

log = logging.getLogger(__name__)

CLEAR_FIELDS = (
    Field("tier", "enum", default="l1", choices=enum_values(Tier)),
    Field("force", "bool", default=False),
)
CHECKSUM_FIELDS = (
    Field("block_ids", "int_list", default=()),
    Field("chunk_size", "int", default=0),
    Field("instance_id", "int", default=0),
    Field("layerwise", "bool", default=False),
)


def compress_block_ids(ids: Sequence[int]) -> list[int | list[int]]:
    """Runs of 3+ consecutive ids as `[first, last]`, others as they are, order kept (how 0.5.6
    echoes `block_id_ranges`): [1, 2, 3, 4, 7, 8] -> [[1, 4], 7, 8]."""
    out: list[int | list[int]] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        if j - i >= 2:
            out.append([ids[i], ids[j]])
        else:
            out.extend(ids[i : j + 1])
        i = j + 1
    return out


def checksums_reply(result: ChecksumResult, ranges: list[Any]) -> Response:
    """The checksum answer of both generations; `ranges` echoes the block ids asked for."""
    return jsonify(
        status="success",
        chunk_size=result.chunk_size,
        num_chunks=result.num_chunks,
        chunk_checksums=result.checksums,
        layerwise=result.layerwise,
        block_id_ranges=ranges,
    )


def create_cache_blueprint(context: RouteContext) -> RouteGroup:
    """Routes that drop KV data from L1 and check KV blocks."""
    bp = Blueprint("cache", __name__)

    @bp.post("/clear-cache")
    @bp.post("/api/clear-cache")
    def clear_cache() -> Response:
        # The request body is ignored (documented); only the query string matters.
        ops = cache_operations(context)
        if ops is None:
            audit("clear-cache", "refused: engine not initialized")
            return engine_not_initialized(status="error", reason=ENGINE_NOT_INITIALIZED)
        try:
            cache_salt = optional_salt(request.args)
            model_name = optional_model_name(request.args)
        except InvalidKeyError as exc:
            audit("clear-cache", "rejected", reason=str(exc))
            return json_error(400, str(exc), status="error", reason=str(exc))
        try:
            removed = ops.clear.clear(force=True, cache_salt=cache_salt, model_name=model_name)
        except Exception:
            log.exception("clear-cache failed")
            audit("clear-cache", "failed", cache_salt=cache_salt, model_name=model_name)
            return json_error(500, INTERNAL_ERROR, status="error", reason=INTERNAL_ERROR)
        audit("clear-cache", "ok", cache_salt=cache_salt, model_name=model_name, removed_objects=removed)
        return jsonify(status="ok")

    @bp.post("/cache/clear")
    def cache_clear() -> Response:
        accepted = accept_change(context, "cache-clear", CLEAR_FIELDS, "ClearRequest", optional=True)
        if isinstance(accepted, Response):
            return accepted
        given, ops = accepted
        body = given or {"tier": "l1", "force": False}
        try:
            cache_salt = optional_salt(request.args)
            model_name = optional_model_name(request.args)
            removed = ops.clear.clear(
                tier=Tier(body["tier"]), force=body["force"], cache_salt=cache_salt, model_name=model_name
            )
        except InvalidRequestError as exc:
            audit("cache-clear", "rejected", tier=body["tier"], reason=str(exc))
            return detail_error(400, str(exc))
        audit(
            "cache-clear", "ok", tier=body["tier"], force=body["force"], cache_salt=cache_salt,
            model_name=model_name, removed_objects=removed,
        )
        return jsonify(status="ok", cleared={"tier": body["tier"]})

    @bp.get("/kvcache/check")
    def kvcache_check() -> Response:
        ops = cache_operations(context)
        if ops is None:
            return engine_not_initialized()
        raw_ids = request.args.get("block_ids")
        if not raw_ids:
            return json_error(400, "block_ids is required")
        try:
            ids, ranges = parse_block_ids(raw_ids)
        except (ValueError, TypeError):
            return json_error(400, "Invalid block_ids format")
        try:
            chunk_size = int(request.args.get("chunk_size", ""))
        except ValueError:
            chunk_size = 0
        if chunk_size <= 0:  # the seed route checks its arguments before the instance
            return json_error(400, "chunk_size must be positive")
        try:
            instance_id = int(request.args.get("instance_id", "0"))
        except ValueError:
            return json_error(400, "instance_id must be an integer")
        layerwise = request.args.get("layerwise", "false").strip().lower() in ("1", "true", "yes")
        try:
            result = ops.checksums.compute(instance_id, ids, chunk_size, layerwise=layerwise)
        except LMCacheError as exc:
            return domain_error(exc)
        return checksums_reply(result, ranges)

    @bp.post("/cache/checksums")
    def cache_checksums() -> Response:
        try:
            body = parse_body(CHECKSUM_FIELDS, "ChecksumRequest")
        except BodyInvalid as exc:
            return exc.response()
        ops = cache_operations(context)
        if ops is None:
            return detail_error(503, SERVER_NOT_INITIALIZED)
        assert body is not None
        try:
            result = ops.checksums.compute(
                body["instance_id"], body["block_ids"], body["chunk_size"], layerwise=body["layerwise"]
            )
        except LMCacheError as exc:
            return domain_error(exc, detail=True)
        return checksums_reply(result, compress_block_ids(body["block_ids"]))

    return RouteGroup(bp, openapi={**CACHE_OPENAPI, **_OPENAPI}, scopes={"/cache/checksums": READ})


# ---------------------------------------------------------------------- OpenAPI

_CHECKSUMS = obj(
    {
        "status": {"type": "string", "enum": ["success"]},
        "chunk_size": {"type": "integer"},
        "num_chunks": {"type": "integer"},
        "chunk_checksums": {
            "description": "MD5 hex per chunk; with layerwise, {layer_<i>: [MD5 per chunk]}",
            "oneOf": [
                {"type": "array", "items": {"type": "string"}},
                {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
            ],
        },
        "layerwise": {"type": "boolean"},
        "block_id_ranges": {
            "type": "array",
            "items": {"oneOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}]},
        },
    }
)

_OPENAPI: dict[str, Any] = {
    "/cache/clear": {
        "post": {
            "summary": "Drop KV data from L1; locked objects too with force (LMCache 0.5.6)",
            "tags": ["cache"],
            "parameters": [
                query_param("cache_salt", "Only this tenant (`_default` = the empty salt)"),
                query_param("model_name", "Only this model"),
            ],
            "requestBody": json_body(
                obj(
                    {"tier": {**TIER_SCHEMA, "default": "l1"}, "force": {"type": "boolean", "default": False}},
                    required=[],
                ),
                required=False,
                description="Optional; absent = {\"tier\": \"l1\", \"force\": false}. Only tier l1 is cleared.",
            ),
            "responses": {
                "200": json_response(
                    "Cleared",
                    obj({"status": {"type": "string", "enum": ["ok"]}, "cleared": obj({"tier": {"type": "string"}})}),
                ),
                **detail_error_responses(400, 413, 422, 503),
            },
        }
    },
    "/kvcache/check": {
        "get": {
            "summary": "MD5 per chunk of blocks of a registered (server-driven) KV cache",
            "tags": ["cache"],
            "parameters": [
                query_param("block_ids", "Block ids: `0,[2,5],8` (scalars and inclusive ranges)", required=True),
                query_param("chunk_size", "Blocks per chunk (> 0)", {"type": "integer", "minimum": 1}, required=True),
                query_param("instance_id", "The registration's instance id", {"type": "integer", "default": 0}),
                query_param("layerwise", "One digest list per layer", {"type": "boolean", "default": False}),
            ],
            "responses": {"200": json_response("Checksums", _CHECKSUMS), **error_responses(400, 404, 409, 501, 503)},
        }
    },
    "/cache/checksums": {
        "post": {
            "summary": "MD5 per chunk of blocks of a registered KV cache (LMCache 0.5.6; the body form of /kvcache/check)",
            "tags": ["cache"],
            "requestBody": json_body(
                obj(
                    {
                        "block_ids": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "chunk_size": {"type": "integer", "minimum": 1},
                        "instance_id": {"type": "integer", "default": 0},
                        "layerwise": {"type": "boolean", "default": False},
                    },
                    required=["block_ids", "chunk_size"],
                )
            ),
            "responses": {"200": json_response("Checksums", _CHECKSUMS), **detail_error_responses(400, 404, 409, 413, 422, 501, 503)},
        }
    },
}
