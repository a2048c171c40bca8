"""Quota routes: `GET /quota`, `GET|PUT|DELETE /quota/<cache_salt>` (`_default` = the empty salt)."""

from __future__ import annotations

import json
import math
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_core.errors import ConfigError, InvalidKeyError
from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import json_error
from lmcache_frontends.admin.gate import require_engine
from lmcache_frontends.admin.openapi import (
    error_responses,
    json_body,
    json_response,
    obj,
    path_param,
)
from lmcache_frontends.admin.params import DEFAULT_SALT_ALIAS, salt_from_url

GIB = 1 << 30

INVALID_JSON_BODY = "invalid JSON body"
BODY_SHAPE = "body must be {'limit_gb': <float>}"
NOT_NUMERIC = "limit_gb must be numeric"
NOT_FINITE = "limit_gb must be finite"
NEGATIVE = "limit_gb must be non-negative"
MAX_LIMIT_GB = float(2**33)  # 8 EiB: beyond that a byte count no longer fits in 63 bits
TOO_LARGE = f"limit_gb must be at most {int(MAX_LIMIT_GB)}"


def _gb(n_bytes: int) -> float:
    return n_bytes / GIB


def _url_salt(salt: str) -> str:
    return DEFAULT_SALT_ALIAS if salt == "" else salt


def parse_limit_gb(raw: bytes) -> float:
    """The `limit_gb` of a PUT body; ValueError carrying the seed's exact message otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(INVALID_JSON_BODY) from None
    if not isinstance(body, dict) or "limit_gb" not in body:
        raise ValueError(BODY_SHAPE)
    limit = body["limit_gb"]
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise ValueError(NOT_NUMERIC)
    try:
        limit = float(limit)
    except OverflowError:  # a JSON integer beyond any float
        raise ValueError(NOT_FINITE) from None
    if not math.isfinite(limit):
        raise ValueError(NOT_FINITE)
    if limit < 0:
        raise ValueError(NEGATIVE)
    if limit > MAX_LIMIT_GB:
        raise ValueError(TOO_LARGE)
    return limit


def create_quota_blueprint(context: RouteContext) -> RouteGroup:
    """Per-cache_salt storage budgets consumed by the IsolatedLRU eviction policy."""
    bp = Blueprint("quota", __name__)
    app = require_engine(bp, context, audited={"put_quota": "quota-set", "delete_quota": "quota-delete"})

    @bp.get("/quota")
    def list_quotas() -> Response:
        storage = app().storage
        usage = storage.l1.bytes_by_salt()
        users = {
            _url_salt(salt): {"limit_gb": _gb(limit), "current_usage_gb": _gb(usage.get(salt, 0))}
            for salt, limit in sorted(storage.quotas.list().items())
        }
        return jsonify(users=users)

    @bp.get("/quota/<cache_salt>")
    def get_quota(cache_salt: str) -> Response:
        try:
            salt = salt_from_url(cache_salt)
        except InvalidKeyError as exc:
            return json_error(400, str(exc))
        storage = app().storage
        limit = storage.quotas.get(salt)
        used = storage.l1.bytes_by_salt().get(salt, 0)
        return jsonify(
            cache_salt=_url_salt(salt),
            limit_gb=_gb(limit or 0),
            current_usage_gb=_gb(used),
            exists=limit is not None,
        )

    @bp.put("/quota/<cache_salt>")
    def put_quota(cache_salt: str) -> Response:
        try:
            salt = salt_from_url(cache_salt)
            limit_gb = parse_limit_gb(request.get_data())
        except ValueError as exc:  # InvalidKeyError is one too
            audit("quota-set", "rejected", cache_salt=cache_salt, reason=str(exc))
            return json_error(400, str(exc))
        try:
            app().storage.quotas.set(salt, int(limit_gb * GIB))
        except ConfigError as exc:
            audit("quota-set", "rejected", cache_salt=cache_salt, reason=str(exc))
            return json_error(400, str(exc))
        audit("quota-set", "ok", cache_salt=_url_salt(salt), limit_gb=limit_gb)
        return jsonify(cache_salt=_url_salt(salt), limit_gb=limit_gb, status="ok")

    @bp.delete("/quota/<cache_salt>")
    def delete_quota(cache_salt: str) -> Response:
        try:
            salt = salt_from_url(cache_salt)
        except InvalidKeyError as exc:
            audit("quota-delete", "rejected", cache_salt=cache_salt, reason=str(exc))
            return json_error(400, str(exc))
        removed = app().storage.quotas.delete(salt)
        audit("quota-delete", "removed" if removed else "not_found", cache_salt=_url_salt(salt))
        return jsonify(cache_salt=_url_salt(salt), status="removed" if removed else "not_found")

    return RouteGroup(bp, openapi=_OPENAPI)


# ---------------------------------------------------------------------- OpenAPI

_SALT = path_param(
    "cache_salt",
    "The tenant; `_default` addresses the empty salt. At most 128 characters; no `@`, `/`, `\\` or NUL.",
)
_GB = {"type": "number", "minimum": 0}

_OPENAPI: dict[str, Any] = {
    "/quota": {
        "get": {
            "summary": "Every registered quota with its live L1 usage",
            "tags": ["quota"],
            "responses": {
                "200": json_response(
                    "Quotas by cache_salt (the empty salt under `_default`)",
                    obj(
                        {
                            "users": {
                                "type": "object",
                                "additionalProperties": obj({"limit_gb": _GB, "current_usage_gb": _GB}),
                            }
                        }
                    ),
                ),
                **error_responses(503),
            },
        }
    },
    "/quota/{cache_salt}": {
        "get": {
            "summary": "One salt's quota and live usage (never 404)",
            "tags": ["quota"],
            "parameters": [_SALT],
            "responses": {
                "200": json_response(
                    "Quota and usage",
                    obj(
                        {
                            "cache_salt": {"type": "string"},
                            "limit_gb": _GB,
                            "current_usage_gb": _GB,
                            "exists": {"type": "boolean"},
                        }
                    ),
                ),
                **error_responses(400, 503),
            },
        },
        "put": {
            "summary": "Create or update a quota",
            "tags": ["quota"],
            "parameters": [_SALT],
            "requestBody": json_body(obj({"limit_gb": {"type": "number", "minimum": 0, "maximum": MAX_LIMIT_GB}})),
            "responses": {
                "200": json_response(
                    "Stored",
                    obj({"cache_salt": {"type": "string"}, "limit_gb": _GB, "status": {"type": "string", "enum": ["ok"]}}),
                ),
                **error_responses(400, 413, 503),
            },
        },
        "delete": {
            "summary": "Remove a quota (the salt's data is evicted next cycle under IsolatedLRU)",
            "tags": ["quota"],
            "parameters": [_SALT],
            "responses": {
                "200": json_response(
                    "Removed, or there was none",
                    obj({"cache_salt": {"type": "string"}, "status": {"type": "string", "enum": ["removed", "not_found"]}}),
                ),
                **error_responses(400, 503),
            },
        },
    },
}
