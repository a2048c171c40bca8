"""Route group `directory`: which instance holds which key on which tier (0.5.6 `/directory/*`)
and, beyond LMCache, `POST /directory/score`: a router's per-request prefix-aware score."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_core.errors import UnprocessableError
from lmcache_core.fleet.model import Tier
from lmcache_core.fleet.wire import (
    body_float,
    instance_id_field,
    parse_keys_list,
    parse_tier,
    parse_token_query,
    record_placements,
)
from lmcache_core.plugin import RouteGroup
from lmcache_core.plugin.routes import READ
from lmcache_frontends.admin.openapi import error_responses, json_response, obj, query_param
from lmcache_frontends.coordinator.common import (
    KEY_SCHEMA,
    PLACEMENT_SCHEMA,
    TOKEN_QUERY_PROPS,
    CoordinatorContext,
    body_schema,
    context,
    int_arg,
    json_body,
    key_result,
)

_RESULT = obj(
    {
        "key": KEY_SCHEMA,
        "placements": {"type": "array", "items": PLACEMENT_SCHEMA},
        "token_ids": {"type": "array", "items": {"type": "integer"}},
        "access_count": {"type": "integer"},
    }
)
_SCORE = obj(
    {
        "instance_id": {"type": "string"},
        "ip": {"type": "string"},
        "http_port": {"type": "integer"},
        "l1_tokens": {"type": "integer"},
        "l2_tokens": {"type": "integer"},
        "prefix_tokens": {"type": "integer"},
        "score": {"type": "number"},
    }
)


def create_directory_blueprint(ctx: CoordinatorContext) -> RouteGroup:
    bp = Blueprint("directory", __name__)

    @bp.post("/directory/lookup")
    def lookup() -> Response:
        svc = context().service
        body = json_body()
        if not isinstance(body, dict):
            raise UnprocessableError("the request body must be a JSON object")
        has_keys, has_tokens = bool(body.get("keys")), bool(body.get("token_ids")) or bool(body.get("tokens_b64"))
        if has_keys == has_tokens:
            raise UnprocessableError("supply exactly one of 'keys' or 'token_ids'")
        if has_keys:
            keys = parse_keys_list(body)
            chunks = len(keys)
        else:
            if not body.get("model_name"):
                raise UnprocessableError("'model_name' is required with 'token_ids'")
            keys, chunks = svc.resolve(parse_token_query(body))
        records = svc.lookup(keys)
        return jsonify({"chunks": chunks, "results": [key_result(k, r) for k, r in zip(keys, records, strict=True)]})

    @bp.post("/directory/score")
    def score() -> Response:
        svc = context().service
        body = json_body()
        if not isinstance(body, dict):
            raise UnprocessableError("the request body must be a JSON object")
        query = parse_token_query(body, hashes_allowed=True)
        weight = body_float(body, "l2_weight", 0.5)
        if weight > 1:
            raise UnprocessableError("l2_weight must be in [0, 1]")
        wanted = body.get("instance_ids")
        if wanted is not None:
            if not isinstance(wanted, list) or len(wanted) > 10_000:
                raise UnprocessableError("instance_ids must be a list of instance ids")
            wanted = [instance_id_field(i, "instance_ids[]") for i in wanted]
        result = svc.score(query, l2_weight=weight, instance_ids=wanted)
        return jsonify(
            {
                "model_name": query.model_name,
                "cache_salt": query.cache_salt,
                "chunk_size": result.chunk_size,
                "chunks": result.chunks,
                "tokens": result.chunks * result.chunk_size,
                "instances": [
                    {
                        "instance_id": s.instance_id,
                        "ip": result.instances[s.instance_id].ip,
                        "http_port": result.instances[s.instance_id].http_port,
                        "l1_tokens": s.l1_tokens,
                        "l2_tokens": s.l2_tokens,
                        "prefix_tokens": s.prefix_tokens,
                        "score": s.score,
                    }
                    for s in result.scores
                ],
            }
        )

    @bp.post("/directory/blend-lookup")
    def blend_lookup() -> Response:
        body = json_body()
        if not isinstance(body, dict):
            raise UnprocessableError("the request body must be a JSON object")
        if body.get("tokens_b64") and not body.get("model_name"):
            raise UnprocessableError("'model_name' is required with 'tokens_b64'")
        parse_token_query(body, require_model=False)
        # Chunk contents are not indexed (CacheBlend fleets): no fragment ever matches, as
        # LMCache answers without --enable-blend-lookup.
        return jsonify({"matches": []})

    @bp.get("/directory/keys")
    def list_keys() -> Response:
        tier = parse_tier(request.args.get("tier"), allow_all=True)
        offset = int_arg("offset", 0, lo=0, hi=1 << 40)
        limit = int_arg("limit", 1000, lo=1, hi=10_000)
        total, page = context().service.store.list_keys(
            tier, request.args.get("instance_id", ""), request.args.get("backend", ""), offset, limit
        )
        return jsonify(
            {
                "total": total,
                "keys": [
                    {"key": k.to_json(), "placements": record_placements(r), "num_tokens": 0, "access_count": r.access_count}
                    for k, r in page
                ],
            }
        )

    @bp.get("/directory/stats")
    def stats() -> Response:
        usage = context().service.usage()
        return jsonify(
            {
                "num_keys": usage.num_keys,
                "num_placements": usage.placements[Tier.L1] + usage.placements[Tier.L2],
                "l1_keys_by_instance": dict(sorted(usage.l1_keys_by_instance.items())),
                "blend": {"num_contents": 0, "num_chunks": 0, "num_claims": 0, "num_namespaces": 0, "table_size": 0},
                "l1_count": usage.placements[Tier.L1],
                "l1_size_bytes": usage.placement_bytes[Tier.L1],
                "l2_count": usage.placements[Tier.L2],
                "l2_size_bytes": usage.placement_bytes[Tier.L2],
            }
        )

    openapi: dict[str, Any] = {
        "/directory/lookup": {
            "post": {
                "summary": "Placements of keys, or of a prompt's chunks (token_ids from position 0)",
                "tags": ["directory"],
                "requestBody": body_schema({"keys": {"type": "array", "items": KEY_SCHEMA}, **TOKEN_QUERY_PROPS}, []),
                "responses": {
                    "200": json_response("One result per key", obj({"chunks": {"type": "integer"}, "results": {"type": "array", "items": _RESULT}})),
                    **error_responses(422, 503),
                },
            }
        },
        "/directory/score": {
            "post": {
                "summary": "Per live instance: the prompt's longest cached prefix in L1, in L2, in either, and a score",
                "tags": ["directory"],
                "requestBody": body_schema(
                    {
                        **TOKEN_QUERY_PROPS,
                        "chunk_hashes": {"type": "array", "items": {"type": "string"}},
                        "l2_weight": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
                        "instance_ids": {"type": "array", "items": {"type": "string"}},
                    },
                    ["model_name"],
                ),
                "responses": {
                    "200": json_response(
                        "Instances, best first",
                        obj(
                            {
                                "model_name": {"type": "string"},
                                "cache_salt": {"type": "string"},
                                "chunk_size": {"type": "integer"},
                                "chunks": {"type": "integer"},
                                "tokens": {"type": "integer"},
                                "instances": {"type": "array", "items": _SCORE},
                            }
                        ),
                    ),
                    **error_responses(422, 503),
                },
            }
        },
        "/directory/blend-lookup": {
            "post": {
                "summary": "CacheBlend fragment lookup (contents are not indexed: no matches)",
                "tags": ["directory"],
                "requestBody": body_schema({**TOKEN_QUERY_PROPS}, []),
                "responses": {"200": json_response("Matches", obj({"matches": {"type": "array", "items": {"type": "object"}}})), **error_responses(422)},
            }
        },
        "/directory/keys": {
            "get": {
                "summary": "Directory keys and their placements, one page at a time (walks the directory)",
                "tags": ["directory"],
                "parameters": [
                    query_param("tier", "l1, l2 or all", {"type": "string", "enum": ["l1", "l2", "all"], "default": "all"}),
                    query_param("instance_id", "Only placements of this instance"),
                    query_param("backend", "Only placements on this backend"),
                    query_param("offset", "Matching keys to skip", {"type": "integer", "minimum": 0, "default": 0}),
                    query_param("limit", "Keys per page", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}),
                ],
                "responses": {
                    "200": json_response("A page", obj({"total": {"type": "integer"}, "keys": {"type": "array", "items": {"type": "object"}}})),
                    **error_responses(422, 503),
                },
            }
        },
        "/directory/stats": {
            "get": {
                "summary": "Key and placement counts and bytes per tier, L1 keys per instance",
                "tags": ["directory"],
                "responses": {"200": json_response("Totals", obj({"num_keys": {"type": "integer"}, "num_placements": {"type": "integer"}}, required=["num_keys"])), **error_responses(503)},
            }
        },
    }
    # Routers send these lookups with a read token: POSTs that only read.
    reads = {"/directory/lookup": READ, "/directory/score": READ, "/directory/blend-lookup": READ}
    return RouteGroup(bp, openapi=openapi, scopes=reads)
