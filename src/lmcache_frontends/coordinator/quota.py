"""Route group `quota`: fleet-wide per-cache_salt L2 quotas and usage (0.5.6 `/quota*`, 0.5.0
`/l2/quota/*` and `/l2/status*`). The eviction loop enforces them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_core.errors import InvalidKeyError
from lmcache_core.fleet.model import Tier
from lmcache_core.fleet.wire import body_object, body_tier, parse_limit_gb, parse_tier
from lmcache_core.plugin import RouteGroup
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.openapi import error_responses, json_response, obj, query_param
from lmcache_frontends.coordinator.common import (
    CoordinatorContext,
    body_schema,
    context,
    gib,
    json_body,
    path_salt,
    to_bytes,
)

_STATUS = obj(
    {"cache_salt": {"type": "string"}, "quota_limit_gb": {"type": "number"}, "quota_exists": {"type": "boolean"}, "usage_gb": {"type": "number"}}
)
_LIST = obj({"total_gb": {"type": "number"}, "by_cache_salt": {"type": "array", "items": _STATUS}})
_QUOTA_REPLY = obj({"cache_salt": {"type": "string"}, "limit_gb": {"type": "number"}, "status": {"type": "string"}})
_CONFIG = obj({"default_limit_gb": {"type": "number", "nullable": True}})
_TIER_PARAM = query_param("tier", "l2 (default) or l1 (usage only: quotas apply to L2)", {"type": "string", "enum": ["l1", "l2"], "default": "l2"})


def _quota_tier(tier: Tier | None) -> None:
    if tier is not Tier.L2:
        raise InvalidKeyError(f"quotas apply to tier 'l2' only, not {tier.value if tier else 'all'!r}")


def _status_tier() -> Tier:
    tier = parse_tier(request.args.get("tier", "l2"), allow_all=True)
    if tier is None:
        raise InvalidKeyError("tier 'all' has no usage accounting; only 'l1', 'l2'")
    return tier


def _salt_status(salt: str, tier: Tier) -> dict[str, Any]:
    svc = context().service
    usage = svc.usage().salt_bytes[tier].get(salt, 0)
    quotas = svc.store.quotas() if tier is Tier.L2 else {}
    return {
        "cache_salt": salt,
        "quota_limit_gb": gib(quotas.get(salt, 0)),
        "quota_exists": salt in quotas,
        "usage_gb": gib(usage),
    }


def _list_status(tier: Tier) -> dict[str, Any]:
    svc = context().service
    by_salt = svc.usage().salt_bytes[tier]
    quotas = svc.store.quotas() if tier is Tier.L2 else {}
    return {
        "total_gb": gib(sum(by_salt.values())),
        "by_cache_salt": [
            {
                "cache_salt": salt,
                "quota_limit_gb": gib(quotas.get(salt, 0)),
                "quota_exists": salt in quotas,
                "usage_gb": gib(by_salt.get(salt, 0)),
            }
            for salt in sorted(set(by_salt) | set(quotas))
        ],
    }


def _set(cache_salt: str) -> Response:
    salt = path_salt(cache_salt)
    body = body_object(json_body())
    _quota_tier(body_tier(body))
    limit_gb = parse_limit_gb(body, "limit_gb")
    assert limit_gb is not None
    context().service.store.set_quota(salt, to_bytes(limit_gb))
    audit("set_quota", "ok", cache_salt=salt, limit_gb=limit_gb)
    return jsonify({"cache_salt": salt, "limit_gb": limit_gb, "status": "ok"})


def _delete(cache_salt: str) -> Response:
    salt = path_salt(cache_salt)
    _quota_tier(parse_tier(request.args.get("tier", "l2"), allow_all=True))
    removed = context().service.store.delete_quota(salt)
    audit("delete_quota", "removed" if removed else "not_found", cache_salt=salt)
    return jsonify({"cache_salt": salt, "limit_gb": 0.0, "status": "removed" if removed else "not_found"})


def create_quota_blueprint(ctx: CoordinatorContext) -> RouteGroup:
    bp = Blueprint("quota", __name__)

    @bp.put("/quota/config")
    def set_config() -> Response:
        body = body_object(json_body())
        _quota_tier(body_tier(body))
        limit = parse_limit_gb(body, "default_limit_gb", optional=True)
        context().service.store.set_default_limit(None if limit is None else to_bytes(limit))
        audit("set_default_quota", "ok", default_limit_gb=limit)
        return jsonify({"default_limit_gb": limit})

    @bp.get("/quota/config")
    def get_config() -> Response:
        _quota_tier(parse_tier(request.args.get("tier", "l2"), allow_all=True))
        limit = context().service.store.default_limit()
        return jsonify({"default_limit_gb": None if limit is None else gib(limit)})

    bp.add_url_rule("/quota/<cache_salt>", "set_quota", _set, methods=["PUT"])
    bp.add_url_rule("/quota/<cache_salt>", "delete_quota", _delete, methods=["DELETE"])
    bp.add_url_rule("/l2/quota/<cache_salt>", "set_l2_quota", _set, methods=["PUT"])
    bp.add_url_rule("/l2/quota/<cache_salt>", "delete_l2_quota", _delete, methods=["DELETE"])

    @bp.get("/quota/<cache_salt>")
    def get_status(cache_salt: str) -> Response:
        return jsonify(_salt_status(path_salt(cache_salt), _status_tier()))

    @bp.get("/quota")
    def list_status() -> Response:
        return jsonify(_list_status(_status_tier()))

    @bp.get("/l2/status/<cache_salt>")
    def get_l2_status(cache_salt: str) -> Response:
        return jsonify(_salt_status(path_salt(cache_salt), Tier.L2))

    @bp.get("/l2/status")
    def list_l2_status() -> Response:
        return jsonify(_list_status(Tier.L2))

    set_op = {
        "summary": "Set a salt's fleet-wide L2 quota (`_default` = the empty salt)",
        "tags": ["quota"],
        "requestBody": body_schema({"limit_gb": {"type": "number", "minimum": 0}, "tier": {"type": "string", "enum": ["l2"]}}, ["limit_gb"]),
        "responses": {"200": json_response("Applied", _QUOTA_REPLY), **error_responses(400, 422, 503)},
    }
    delete_op = {
        "summary": "Remove a salt's quota (status removed or not_found)",
        "tags": ["quota"],
        "parameters": [_TIER_PARAM],
        "responses": {"200": json_response("Removed or not found", _QUOTA_REPLY), **error_responses(400, 422, 503)},
    }
    openapi: dict[str, Any] = {
        "/quota/config": {
            "put": {
                "summary": "The limit of salts without a quota (null: they are never evicted)",
                "tags": ["quota"],
                "requestBody": body_schema({"default_limit_gb": {"type": "number", "nullable": True}, "tier": {"type": "string"}}, []),
                "responses": {"200": json_response("Applied", _CONFIG), **error_responses(400, 422, 503)},
            },
            "get": {
                "summary": "The default limit",
                "tags": ["quota"],
                "parameters": [_TIER_PARAM],
                "responses": {"200": json_response("The default", _CONFIG), **error_responses(400, 422, 503)},
            },
        },
        "/quota/{cache_salt}": {
            "put": set_op,
            "delete": delete_op,
            "get": {
                "summary": "A salt's quota and usage on one tier",
                "tags": ["quota"],
                "parameters": [_TIER_PARAM],
                "responses": {"200": json_response("Quota and usage", _STATUS), **error_responses(400, 422, 503)},
            },
        },
        "/quota": {
            "get": {
                "summary": "Quota and usage of every salt on one tier",
                "tags": ["quota"],
                "parameters": [_TIER_PARAM],
                "responses": {"200": json_response("Quotas and usage", _LIST), **error_responses(400, 422, 503)},
            }
        },
        "/l2/quota/{cache_salt}": {"put": {**set_op, "summary": "Set a quota (0.5.0)"}, "delete": {**delete_op, "summary": "Remove a quota (0.5.0)"}},
        "/l2/status/{cache_salt}": {
            "get": {"summary": "A salt's L2 quota and usage (0.5.0)", "tags": ["quota"], "responses": {"200": json_response("Quota and usage", _STATUS), **error_responses(400, 503)}}
        },
        "/l2/status": {
            "get": {"summary": "Every salt's L2 quota and usage (0.5.0)", "tags": ["quota"], "responses": {"200": json_response("Quotas and usage", _LIST), **error_responses(503)}}
        },
    }
    return RouteGroup(bp, openapi=openapi)


