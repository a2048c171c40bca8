"""LMCache 0.5.6's object routes: `GET /cache/objects` (a paged listing of one L2 adapter) and
`DELETE /cache/objects` (one key-addressed delete spanning L1 and L2), over the ObjectService
that also answers 0.5.0's `/l2/keys` and `DELETE /l2`."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_core.cache_ops import Tier
from lmcache_core.cache_ops.objects import MAX_DELETE_BATCH, check_delete_batch
from lmcache_core.cache_ops.tiers import require_tier
from lmcache_core.errors import InvalidKeyError, LMCacheError
from lmcache_core.keys import ObjectKey
from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_core.ports import ListingNotSupportedError
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import cache_operations, domain_error
from lmcache_frontends.admin.l2 import (
    DEFAULT_PAGE_SIZE,
    ENCODED_KEY_SCHEMA,
    MAX_PAGE_SIZE,
    PAGE_PARAMS,
)
from lmcache_frontends.admin.openapi import (
    TIER_SCHEMA,
    detail_error_responses,
    json_body,
    json_response,
    obj,
    page_schema,
    query_param,
)
from lmcache_frontends.admin.params import optional_salt
from lmcache_frontends.admin.wire import (
    SERVER_NOT_INITIALIZED,
    BodyInvalid,
    Field,
    accept_change,
    detail_error,
    enum_values,
    parse_query,
)

log = logging.getLogger(__name__)

_TIERS = enum_values(Tier)
ENCODED_KEY_FIELDS = (
    Field("chunk_hash_hex", "str"),
    Field("model_name", "str"),
    Field("kv_rank", "int"),
    Field("object_group_id", "int", default=0),
    Field("cache_salt", "str", default=""),
)
DELETE_FIELDS = (
    Field("keys", "model", fields=ENCODED_KEY_FIELDS, many=True, class_name="EncodedObjectKey"),
    Field("tier", "enum", default="l2", choices=_TIERS),
    Field("force", "bool", default=False),
    Field("adapter", "str", default=None, nullable=True),
)
LIST_QUERY = (
    Field("tier", "enum", default="l2", choices=_TIERS),
    Field("adapter", "str", default=None),
    Field("model_name", "str", default=None),
    Field("page_size", "int", default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
    Field("page_token", "str", default=None),
)


def keys_from_wire(raw_keys: list[dict[str, Any]]) -> list[ObjectKey]:
    """ObjectKeys of validated EncodedObjectKey fields; InvalidKeyError (400) naming the index
    of the first that breaks an invariant. Hex digits may come in either case."""
    keys = []
    for i, raw in enumerate(raw_keys):
        try:
            keys.append(ObjectKey.from_json({**raw, "chunk_hash_hex": raw["chunk_hash_hex"].lower()}))
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"keys[{i}]: {exc}") from None
    return keys


def create_objects_blueprint(context: RouteContext) -> RouteGroup:
    """`/cache/objects`: list what an L2 adapter holds; delete keys from L1, L2 or both."""
    bp = Blueprint("objects", __name__)

    @bp.get("/cache/objects")
    def list_objects() -> Response:
        try:
            query = parse_query(LIST_QUERY)
        except BodyInvalid as exc:
            return exc.response()
        ops = cache_operations(context)
        if ops is None:
            return detail_error(503, SERVER_NOT_INITIALIZED)
        try:
            require_tier(Tier(query["tier"]), Tier.L2)
            page = ops.objects.list_objects(
                query["adapter"],
                page_size=query["page_size"],
                page_token=query["page_token"],
                model_name=query["model_name"],
                cache_salt=optional_salt(request.args),
            )
        except ListingNotSupportedError as exc:
            kind = ops.objects.adapter(query["adapter"]).adapter.kind
            return detail_error(503, f"L2 adapter {kind!r} does not support listing: {exc}")
        except LMCacheError as exc:
            return domain_error(exc, detail=True)
        return jsonify(
            adapter=page.adapter.adapter.kind,
            shared=page.adapter.shared,
            entries=[{"key": key.to_json(), "size_bytes": size} for key, size in page.entries],
            next_page_token=page.next_page_token,
        )

    @bp.delete("/cache/objects")
    def delete_objects() -> Response:
        accepted = accept_change(context, "cache-objects-delete", DELETE_FIELDS, "DeleteObjectsRequest")
        if isinstance(accepted, Response):
            return accepted
        body, ops = accepted
        assert body is not None
        tier, force, adapter = Tier(body["tier"]), body["force"], body["adapter"]
        try:
            check_delete_batch(len(body["keys"]))
            keys = keys_from_wire(body["keys"])
            outcome = ops.objects.delete(keys, tier=tier, adapter=adapter, force=force)
        except LMCacheError as exc:
            audit("cache-objects-delete", "rejected", tier=tier.value, adapter=adapter, requested=len(body["keys"]), reason=str(exc))
            return domain_error(exc, detail=True)
        details = {
            "tier": tier.value,
            "force": force,
            "adapter": None if outcome.adapter is None else outcome.adapter.name,
            "requested": outcome.requested,
            "l1_deleted": outcome.l1_deleted,
            "l1_skipped": outcome.l1_skipped,
            "l2_deleted": outcome.l2_deleted,
        }
        result: dict[str, Any] = {"deleted": outcome.deleted, "skipped": outcome.l1_skipped, "ok": outcome.ok}
        if not outcome.ok:
            log.warning("DELETE /cache/objects: L2 adapter failed: %s", outcome.error)
            audit("cache-objects-delete", "failed", reason=outcome.error, **details)
            result["error"] = outcome.error
        else:
            audit("cache-objects-delete", "ok", **details)
        return jsonify(result)

    return RouteGroup(bp, openapi=_OPENAPI)


# ---------------------------------------------------------------------- OpenAPI


_OPENAPI: dict[str, Any] = {
    "/cache/objects": {
        "get": {
            "summary": "One page of the keys resident in one L2 adapter (LMCache 0.5.6)",
            "tags": ["cache"],
            "parameters": [
                query_param("tier", "Only `l2` is listed", {**TIER_SCHEMA, "default": "l2"}),
                query_param("adapter", "Adapter type (`GET /config/adapters`); default: the primary"),
                *PAGE_PARAMS,
            ],
            "responses": {
                "200": json_response("One page", page_schema(ENCODED_KEY_SCHEMA, shared={"type": "boolean"})),
                **detail_error_responses(400, 404, 422, 503),
            },
        },
        "delete": {
            "summary": "Delete keys from L1, L2 or both (locks respected unless force) (LMCache 0.5.6)",
            "tags": ["cache"],
            "requestBody": json_body(
                obj(
                    {
                        "keys": {"type": "array", "maxItems": MAX_DELETE_BATCH, "items": ENCODED_KEY_SCHEMA},
                        "tier": {**TIER_SCHEMA, "default": "l2"},
                        "force": {"type": "boolean", "default": False},
                        "adapter": {"type": "string", "nullable": True, "description": "L2 adapter type; default: the primary"},
                    },
                    required=["keys"],
                )
            ),
            "responses": {
                "200": json_response(
                    "Deleted; `ok` is false (with `error`) when the L2 adapter failed",
                    obj(
                        {
                            "deleted": {"type": "integer"},
                            "skipped": {"type": "integer", "description": "L1 objects kept: locked or pinned"},
                            "ok": {"type": "boolean"},
                            "error": {"type": "string"},
                        },
                        required=["deleted", "skipped", "ok"],
                    ),
                ),
                **detail_error_responses(400, 404, 413, 422, 503),
            },
        },
    }
}
