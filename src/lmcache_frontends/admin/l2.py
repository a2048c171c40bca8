"""L2 management routes of LMCache 0.5.0: `GET /l2/adapters`, `DELETE /l2`, `GET /l2/keys`, over
the ObjectService that also answers 0.5.6's `/config/adapters` and `/cache/objects`."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_core.cache_ops.objects import MAX_DELETE_BATCH, check_delete_batch
from lmcache_core.errors import InvalidKeyError, InvalidRequestError, LMCacheError
from lmcache_core.keys import ObjectKey
from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_core.ports import ListingNotSupportedError
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import (
    cache_operations,
    domain_error,
    engine_not_initialized,
    json_error,
)
from lmcache_frontends.admin.openapi import (
    adapters_document,
    error_responses,
    json_body,
    json_response,
    obj,
    page_schema,
    query_param,
)
from lmcache_frontends.admin.params import optional_model_name, optional_salt, single

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 5000

# Field -> accepted JSON types of one EncodedObjectKey (shape checks give 422, invariants 400).
_KEY_FIELDS: dict[str, tuple[type, ...]] = {
    "chunk_hash_hex": (str,),
    "model_name": (str,),
    "kv_rank": (int,),
    "object_group_id": (int,),
    "cache_salt": (str,),
}
_REQUIRED_KEY_FIELDS = ("chunk_hash_hex", "model_name", "kv_rank")


class _BodyShapeError(ValueError):
    """The body does not have the documented shape (HTTP 422)."""


def parse_delete_body(body: Any) -> list[ObjectKey]:
    """The keys of a `DELETE /l2` body. _BodyShapeError (422) for a wrong shape or field type,
    InvalidKeyError (400) for a key that breaks an ObjectKey invariant or a batch over the cap."""
    if not isinstance(body, dict):
        raise _BodyShapeError("request body must be a JSON object {\"keys\": [EncodedObjectKey, ...]}")
    unknown = sorted(set(body) - {"keys"})
    if unknown:
        raise _BodyShapeError(f"unknown body field(s): {', '.join(unknown)}")
    raw_keys = body.get("keys")
    if not isinstance(raw_keys, list):
        raise _BodyShapeError("body field 'keys' is required and must be a list")
    check_delete_batch(len(raw_keys))
    for i, raw in enumerate(raw_keys):
        if not isinstance(raw, dict):
            raise _BodyShapeError(f"keys[{i}] must be an object")
        unknown = sorted(set(raw) - set(_KEY_FIELDS))
        if unknown:
            raise _BodyShapeError(f"keys[{i}]: unknown field(s): {', '.join(unknown)}")
        for name in _REQUIRED_KEY_FIELDS:
            if name not in raw:
                raise _BodyShapeError(f"keys[{i}]: missing field {name}")
        for name, types in _KEY_FIELDS.items():
            if name in raw and (isinstance(raw[name], bool) or not isinstance(raw[name], types)):
                raise _BodyShapeError(f"keys[{i}].{name} must be {'a string' if types == (str,) else 'an integer'}")
    keys: list[ObjectKey] = []
    for i, raw in enumerate(raw_keys):
        try:
            keys.append(ObjectKey.from_json(raw))
        except InvalidKeyError as exc:
            raise InvalidKeyError(f"keys[{i}]: {exc}") from None
    return keys


def _page_size(args: Any) -> int:
    raw = single(args, "page_size")
    if raw is None:
        return DEFAULT_PAGE_SIZE
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise _BodyShapeError(f"page_size must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise _BodyShapeError(f"page_size must be in [1, {MAX_PAGE_SIZE}], got {value}")
    return value


def create_l2_blueprint(context: RouteContext) -> RouteGroup:
    """Routes to enumerate L2 adapters, purge keys from one and list what one holds."""
    bp = Blueprint("l2", __name__)

    @bp.get("/l2/adapters")
    def l2_adapters() -> Response:
        ops = cache_operations(context)
        if ops is None:
            return engine_not_initialized()
        return jsonify(
            adapters=[
                {"index": a.index, "type_name": a.type_name, "primary": a.primary, "name": a.name}
                for a in ops.objects.adapters()
            ]
        )

    @bp.delete("/l2")
    def delete_l2() -> Response:
        ops = cache_operations(context)
        if ops is None:
            audit("l2-delete", "refused: engine not initialized")
            return engine_not_initialized()
        try:
            selector = single(request.args, "adapter")
            selected = ops.objects.adapter(selector)
        except LMCacheError as exc:
            audit("l2-delete", f"refused: {exc}", adapter=request.args.get("adapter"))
            return domain_error(exc)
        body = request.get_json(silent=True)
        if body is None and request.get_data():
            audit("l2-delete", "rejected: invalid JSON body", adapter=selected.type_name)
            return json_error(422, "request body is not valid JSON")
        try:
            keys = parse_delete_body(body)
        except _BodyShapeError as exc:
            audit("l2-delete", "rejected", adapter=selected.type_name, reason=str(exc))
            return json_error(422, str(exc))
        except (InvalidKeyError, InvalidRequestError) as exc:
            audit("l2-delete", "rejected", adapter=selected.type_name, reason=str(exc))
            return json_error(400, str(exc))
        response: dict[str, Any] = {"requested": len(keys), "adapter": selected.type_name}
        outcome = ops.objects.delete(keys, adapter=selector)
        if not outcome.ok:
            # The documented contract: an adapter failure is a 200 with ok=false, not a 500.
            log.warning("DELETE /l2 on %s failed: %s", selected.name, outcome.error)
            audit("l2-delete", "failed", adapter=selected.type_name, requested=len(keys), reason=outcome.error)
            response.update(ok=False, error=outcome.error)
            return jsonify(response)
        audit("l2-delete", "ok", adapter=selected.type_name, requested=len(keys), deleted=outcome.l2_deleted)
        response.update(ok=True, deleted=outcome.l2_deleted)
        return jsonify(response)

    @bp.get("/l2/keys")
    def l2_keys() -> Response:
        ops = cache_operations(context)
        if ops is None:
            return engine_not_initialized()
        try:
            selector = single(request.args, "adapter")
            selected = ops.objects.adapter(selector)
        except LMCacheError as exc:
            return domain_error(exc)
        try:
            page_size = _page_size(request.args)
        except _BodyShapeError as exc:
            return json_error(422, str(exc))
        except InvalidKeyError as exc:
            return json_error(400, str(exc))
        try:
            model_name = optional_model_name(request.args)
            cache_salt = optional_salt(request.args)
            page_token = single(request.args, "page_token") or None
            page = ops.objects.list_objects(
                selector, page_size=page_size, page_token=page_token, model_name=model_name, cache_salt=cache_salt
            )
        except ListingNotSupportedError as exc:
            return json_error(501, f"L2 adapter {selected.type_name!r} does not support listing: {exc}")
        except LMCacheError as exc:
            return domain_error(exc)
        entries = [{"key": key.to_json(), "size_bytes": size} for key, size in page.entries]
        return jsonify(adapter=selected.type_name, entries=entries, next_page_token=page.next_page_token)

    return RouteGroup(bp, openapi=_OPENAPI)


# ---------------------------------------------------------------------- OpenAPI

ENCODED_KEY_SCHEMA = obj(
    {
        "chunk_hash_hex": {"type": "string", "description": "Chunk hash, lowercase hex, even length"},
        "model_name": {"type": "string", "description": "Non-empty, no `@`"},
        "kv_rank": {"type": "integer"},
        "object_group_id": {"type": "integer", "default": 0},
        "cache_salt": {"type": "string", "default": ""},
    },
    required=_REQUIRED_KEY_FIELDS,
)
PAGE_PARAMS = [
    query_param("model_name", "Only keys of this model"),
    query_param("cache_salt", "Only keys of this tenant (`_default` = the empty salt)"),
    query_param(
        "page_size",
        f"Entries per page, 1..{MAX_PAGE_SIZE}",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
    ),
    query_param("page_token", "Opaque cursor from the previous page's next_page_token"),
]
"""The filters and paging of an L2 listing (`GET /l2/keys`, `GET /cache/objects`)."""
_ADAPTER_PARAM = query_param("adapter", "Adapter selector: type_name (or name / kind) from GET /l2/adapters; default: the primary")

_OPENAPI: dict[str, Any] = {
    "/l2/adapters": {
        "get": {
            "summary": "Every configured L2 adapter, in configuration order",
            "tags": ["l2"],
            "responses": {
                "200": json_response(
                    "Adapters (an empty list when none is configured)",
                    adapters_document(
                        type_name={"type": "string"}, primary={"type": "boolean"}, name={"type": "string"}
                    ),
                ),
                **error_responses(503),
            },
        }
    },
    "/l2": {
        "delete": {
            "summary": "Delete keys from one L2 adapter (locked keys skipped)",
            "tags": ["l2"],
            "parameters": [_ADAPTER_PARAM],
            "requestBody": json_body(
                obj({"keys": {"type": "array", "maxItems": MAX_DELETE_BATCH, "items": ENCODED_KEY_SCHEMA}}, extra=False)
            ),
            "responses": {
                "200": json_response(
                    "The request reached the adapter; `ok` tells the outcome",
                    obj(
                        {
                            "requested": {"type": "integer"},
                            "adapter": {"type": "string"},
                            "ok": {"type": "boolean"},
                            "deleted": {"type": "integer"},
                            "error": {"type": "string"},
                        },
                        required=["requested", "adapter", "ok"],
                    ),
                ),
                **error_responses(400, 404, 413, 422, 503),
            },
        }
    },
    "/l2/keys": {
        "get": {
            "summary": "One page of the keys resident in one L2 adapter",
            "tags": ["l2"],
            "parameters": [_ADAPTER_PARAM, *PAGE_PARAMS],
            "responses": {
                "200": json_response("One page", page_schema(ENCODED_KEY_SCHEMA)),
                **error_responses(400, 404, 422, 501, 503),
            },
        }
    },
}
