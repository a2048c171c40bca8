"""Route group `cache`: fleet cache control (0.5.6): L2 pins that keep keys out of the eviction
plan, and token-addressed delete and prefetch forwarded to one registered server."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, jsonify, request

from lmcache_core.errors import UnprocessableError, UpstreamError
from lmcache_core.fleet.model import Tier
from lmcache_core.fleet.ports import ServerUnreachable
from lmcache_core.fleet.wire import (
    body_bool,
    body_object,
    body_tier,
    instance_id_field,
    parse_token_query,
)
from lmcache_core.plugin import RouteGroup
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.openapi import error_responses, json_response, obj, query_param
from lmcache_frontends.admin.params import salt_from_url
from lmcache_frontends.coordinator.common import (
    KEY_SCHEMA,
    TOKEN_QUERY_PROPS,
    CoordinatorContext,
    body_schema,
    context,
    int_arg,
    json_body,
)

_PIN_REPLY = obj({"requested": {"type": "integer"}, "affected": {"type": "integer"}, "status": {"type": "string"}})
_DELETE_REPLY = obj(
    {
        "instance_id": {"type": "string"},
        "requested": {"type": "integer"},
        "affected": {"type": "integer"},
        "skipped": {"type": "integer"},
        "status": {"type": "string"},
    }
)
_PREFETCH_REPLY = obj({"instance_id": {"type": "string"}, "request_id": {"type": "string"}, "chunks": {"type": "integer"}, "status": {"type": "string"}})


def _pin(delta: int) -> Response:
    svc = context().service
    body = body_object(json_body())
    _require_world_size(body)
    keys, chunks = svc.resolve(parse_token_query(body))
    svc.store.pin(keys, delta)
    status = "pinned" if delta > 0 else "unpinned"
    audit("pin" if delta > 0 else "unpin", "ok", keys=len(keys))
    return jsonify({"requested": chunks, "affected": len(keys), "status": status})


def _require_world_size(body: Mapping[str, Any]) -> None:
    if "world_size" not in body:
        raise UnprocessableError("world_size is required")


def create_cache_blueprint(ctx: CoordinatorContext) -> RouteGroup:
    bp = Blueprint("fleet_cache", __name__)
    bp.add_url_rule("/cache/pins", "pin", lambda: _pin(+1), methods=["POST"])
    bp.add_url_rule("/cache/pins", "unpin", lambda: _pin(-1), methods=["DELETE"])

    @bp.get("/cache/pins")
    def list_pins() -> Response:
        raw_salt = request.args.get("cache_salt", "")
        salt = salt_from_url(raw_salt) if raw_salt else None
        model = request.args.get("model_name") or None
        total, page = context().service.store.list_pins(
            salt, model, int_arg("offset", 0, lo=0, hi=1 << 40), int_arg("limit", 1000, lo=1, hi=10_000)
        )
        return jsonify({"total": total, "pins": [{"key": k.to_json(), "pin_count": n} for k, n in page]})

    @bp.post("/cache/delete")
    def delete() -> Response:
        svc = context().service
        body = body_object(json_body())
        instance_id = instance_id_field(body.get("instance_id"))
        _require_world_size(body)
        tier = body_tier(body, "all", allow_all=True)
        force = body_bool(body, "force")
        query = parse_token_query(body)
        target = svc.instance(instance_id)
        keys, chunks = svc.resolve(query)
        if not chunks:
            return jsonify({"instance_id": instance_id, "requested": 0, "affected": 0, "skipped": 0, "status": "noop"})
        touches_l2 = tier in (Tier.L2, None)
        delete_keys, pin_skipped = keys, 0
        if touches_l2 and not force:
            counts = svc.store.pinned(keys)
            delete_keys = [k for k, n in zip(keys, counts, strict=True) if n == 0]
            pin_skipped = len(keys) - len(delete_keys)
        deleted = skipped = 0
        if delete_keys:
            payload = {"keys": [k.to_json() for k in delete_keys], "tier": tier.value if tier else "all", "force": force}
            try:
                status, reply = svc.servers.call(target, "DELETE", "/cache/objects", payload)
            except ServerUnreachable as exc:
                raise UpstreamError(f"delete to {instance_id!r} failed: {exc}") from None
            if status in (404, 405) and tier is Tier.L2:
                try:
                    deleted = svc.servers.delete_l2(target, delete_keys)
                except ServerUnreachable as exc:
                    raise UpstreamError(f"delete to {instance_id!r} failed: {exc}") from None
            elif not 200 <= status < 300 or not isinstance(reply, dict):
                raise UpstreamError(f"delete to {instance_id!r} failed: HTTP {status}")
            else:
                deleted, skipped = int(reply.get("deleted", 0) or 0), int(reply.get("skipped", 0) or 0)
        if touches_l2 and force:
            svc.store.drop_pins(keys)
        audit("delete", "ok", instance_id=instance_id, keys=len(delete_keys), tier=tier.value if tier else "all", force=force)
        return jsonify(
            {"instance_id": instance_id, "requested": chunks, "affected": deleted, "skipped": skipped + pin_skipped, "status": "deleted"}
        )

    @bp.post("/cache/prefetches")
    def prefetch() -> Response:
        svc = context().service
        body = body_object(json_body())
        instance_id = instance_id_field(body.get("instance_id"))
        _require_world_size(body)
        query = parse_token_query(body)
        target = svc.instance(instance_id)
        payload = {
            "model_name": query.model_name,
            "world_size": query.world_size,
            "token_ids": [] if query.token_ids is None else query.token_ids.tolist(),
            "cache_salt": query.cache_salt,
        }
        try:
            status, reply = svc.servers.call(target, "POST", "/cache/prefetches", payload)
        except ServerUnreachable as exc:
            raise UpstreamError(f"prefetch submit to {instance_id!r} failed: {exc}") from None
        if not 200 <= status < 300 or not isinstance(reply, dict):
            raise UpstreamError(f"prefetch submit to {instance_id!r} failed: HTTP {status}")
        audit("prefetch", "ok", instance_id=instance_id)
        return jsonify(
            {
                "instance_id": instance_id,
                "request_id": str(reply.get("request_id", "")),
                "chunks": int(reply.get("chunks", 0) or 0),
                "status": str(reply.get("status", "submitted")),
            }
        )

    @bp.get("/cache/prefetches/<instance_id>/<request_id>")
    def prefetch_status(instance_id: str, request_id: str) -> Response:
        svc = context().service
        target = svc.instance(instance_id)
        try:
            status, reply = svc.servers.call(target, "GET", f"/cache/prefetches/{quote(request_id, safe='')}")
        except ServerUnreachable as exc:
            raise UpstreamError(f"prefetch status from {instance_id!r} failed: {exc}") from None
        response = jsonify(reply if reply is not None else {})
        response.status_code = status
        return response

    token_body = body_schema({**TOKEN_QUERY_PROPS}, ["model_name", "world_size"])
    target_body = body_schema(
        {"instance_id": {"type": "string"}, **TOKEN_QUERY_PROPS, "tier": {"type": "string", "enum": ["l1", "l2", "all"]}, "force": {"type": "boolean"}},
        ["instance_id", "model_name", "world_size"],
    )
    openapi: dict[str, Any] = {
        "/cache/pins": {
            "post": {
                "summary": "Pin a prompt's chunks against fleet L2 eviction",
                "tags": ["cache"],
                "requestBody": token_body,
                "responses": {"200": json_response("Pinned", _PIN_REPLY), **error_responses(422, 503)},
            },
            "delete": {
                "summary": "Release one pin on a prompt's chunks",
                "tags": ["cache"],
                "requestBody": token_body,
                "responses": {"200": json_response("Unpinned", _PIN_REPLY), **error_responses(422, 503)},
            },
            "get": {
                "summary": "Pinned keys, one page at a time",
                "tags": ["cache"],
                "parameters": [
                    query_param("cache_salt", "Only this tenant (`_default` = the empty salt; absent = all)"),
                    query_param("model_name", "Only this model"),
                    query_param("offset", "Keys to skip", {"type": "integer", "minimum": 0, "default": 0}),
                    query_param("limit", "Keys per page", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000}),
                ],
                "responses": {
                    "200": json_response(
                        "A page",
                        obj({"total": {"type": "integer"}, "pins": {"type": "array", "items": obj({"key": KEY_SCHEMA, "pin_count": {"type": "integer"}})}}),
                    ),
                    **error_responses(400, 422, 503),
                },
            },
        },
        "/cache/delete": {
            "post": {
                "summary": "Delete a prompt's chunks on one server (L2 pins hold keys back unless force)",
                "tags": ["cache"],
                "requestBody": target_body,
                "responses": {"200": json_response("Deleted", _DELETE_REPLY), **error_responses(404, 422, 502, 503)},
            }
        },
        "/cache/prefetches": {
            "post": {
                "summary": "Warm one server's L1 with a prompt's chunks (forwarded to its POST /cache/prefetches)",
                "tags": ["cache"],
                "requestBody": target_body,
                "responses": {"200": json_response("Submitted", _PREFETCH_REPLY), **error_responses(404, 422, 502, 503)},
            }
        },
        "/cache/prefetches/{instance_id}/{request_id}": {
            "get": {
                "summary": "A prefetch's progress, relayed from the server",
                "tags": ["cache"],
                "responses": {"200": json_response("The server's answer", {"type": "object"}), **error_responses(404, 502, 503)},
            }
        },
    }
    return RouteGroup(bp, openapi=openapi)
