"""Route group `membership`: servers register, heartbeat and deregister; operators list the
fleet and its memory (LMCache 0.5.0 and 0.5.6 `/instances`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from lmcache_core.errors import NotFoundError
from lmcache_core.fleet.model import CapacityDecl, Tier, UsageSnapshot
from lmcache_core.fleet.wire import instance_to_json, parse_register
from lmcache_core.plugin import RouteGroup
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import json_error
from lmcache_frontends.admin.openapi import error_responses, json_response, obj
from lmcache_frontends.coordinator.common import CoordinatorContext, body_schema, context, json_body

_INSTANCE = obj(
    {
        "instance_id": {"type": "string"},
        "ip": {"type": "string"},
        "http_port": {"type": "integer"},
        "registration_time": {"type": "number"},
        "metadata": {"type": "object"},
        "p2p_advertised_url": {"type": "string"},
        "mq_port": {"type": "integer"},
    }
)
_MODULE = obj(
    {
        "tier": {"type": "string"},
        "backend": {"type": "string"},
        "shared": {"type": "boolean"},
        "used_bytes": {"type": "integer"},
        "capacity_bytes": {"type": "integer"},
        "usage_ratio": {"type": "number", "nullable": True},
    }
)
_INSTANCE_USAGE = obj(
    {
        "instance_id": {"type": "string"},
        "registered": {"type": "boolean"},
        "declared_capacity": {"type": "boolean"},
        "modules": {"type": "array", "items": _MODULE},
    }
)


def create_membership_blueprint(ctx: CoordinatorContext) -> RouteGroup:
    bp = Blueprint("membership", __name__)

    @bp.post("/instances")
    def register() -> Response:
        svc = context().service
        info = parse_register(json_body(), now=svc.clock.time())
        instance_id, existed = svc.register(info)
        audit("register", "ok", instance_id=instance_id, ip=info.ip, http_port=info.http_port)
        return jsonify({"instance_id": instance_id, "re_registered": existed})

    @bp.put("/instances/<instance_id>/heartbeat")
    def heartbeat(instance_id: str) -> Response:
        if context().service.heartbeat(instance_id):
            return jsonify({"instance_id": instance_id})
        return json_error(404, f"unknown instance {instance_id}; re-register")

    @bp.delete("/instances/<instance_id>")
    def deregister(instance_id: str) -> Response:
        existed = context().service.deregister(instance_id)
        audit("deregister", "ok" if existed else "not registered", instance_id=instance_id)
        return Response(status=204)

    @bp.get("/instances")
    def list_instances() -> Response:
        records = context().service.live_instances(fresh=True)
        return jsonify({"instances": [instance_to_json(r.info) for r in records.values()]})

    @bp.get("/instances/usage")
    def fleet_usage() -> Response:
        svc = context().service
        usage, declared = svc.usage(), svc.store.capacities()
        registered = set(svc.live_instances(fresh=True))
        owners = {slot.owner for slot in usage.owner_bytes if slot.owner}
        instances = [
            _instance_status(i, usage, declared.get(i, ()), i in registered) for i in sorted(registered | owners | set(declared))
        ]
        return jsonify({"instances": instances, "shared_modules": _shared_modules(usage, declared)})

    @bp.get("/instances/<instance_id>/usage")
    def instance_usage(instance_id: str) -> Response:
        svc = context().service
        usage, declared = svc.usage(), svc.store.capacities().get(instance_id, ())
        registered = svc.store.instance(instance_id) is not None
        used = any(slot.owner == instance_id for slot in usage.owner_bytes)
        if not (registered or declared or used):
            raise NotFoundError(f"unknown instance {instance_id!r}")
        return jsonify(_instance_status(instance_id, usage, declared, registered))

    openapi: dict[str, Any] = {
        "/instances": {
            "post": {
                "summary": "Register (or re-register) a server; an empty instance_id gets a generated one",
                "tags": ["membership"],
                "requestBody": body_schema(
                    {
                        "instance_id": {"type": "string"},
                        "ip": {"type": "string"},
                        "http_port": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "metadata": {"type": "object"},
                        "p2p_advertised_url": {"type": "string"},
                        "mq_port": {"type": "integer"},
                    },
                    ["ip", "http_port"],
                ),
                "responses": {
                    "200": json_response("Registered", obj({"instance_id": {"type": "string"}, "re_registered": {"type": "boolean"}})),
                    **error_responses(422, 503),
                },
            },
            "get": {
                "summary": "Every registered server",
                "tags": ["membership"],
                "responses": {"200": json_response("The fleet", obj({"instances": {"type": "array", "items": _INSTANCE}})), **error_responses(503)},
            },
        },
        "/instances/{instance_id}/heartbeat": {
            "put": {
                "summary": "Extend a registration's lease; 404 means re-register",
                "tags": ["membership"],
                "responses": {"200": json_response("Lease extended", obj({"instance_id": {"type": "string"}})), **error_responses(404, 503)},
            }
        },
        "/instances/{instance_id}": {
            "delete": {
                "summary": "Deregister (idempotent); the server's L1 placements leave the directory",
                "tags": ["membership"],
                "responses": {"204": {"description": "Deregistered (or was not registered)"}, **error_responses(503)},
            }
        },
        "/instances/usage": {
            "get": {
                "summary": "Bytes held per server and shared pool, joined to declared capacities",
                "tags": ["membership"],
                "responses": {
                    "200": json_response(
                        "Fleet memory",
                        obj({"instances": {"type": "array", "items": _INSTANCE_USAGE}, "shared_modules": {"type": "array", "items": _MODULE}}),
                    ),
                    **error_responses(503),
                },
            }
        },
        "/instances/{instance_id}/usage": {
            "get": {
                "summary": "One server's memory",
                "tags": ["membership"],
                "responses": {"200": json_response("Its memory", _INSTANCE_USAGE), **error_responses(404, 503)},
            }
        },
    }
    return RouteGroup(bp, openapi=openapi)


def _module(tier: Tier, backend: str, used: int, capacity: int, shared: bool) -> dict[str, Any]:
    return {
        "tier": tier.value,
        "backend": backend,
        "shared": shared,
        "used_bytes": used,
        "capacity_bytes": capacity,
        "usage_ratio": used / capacity if capacity > 0 else None,
    }


def _instance_status(instance_id: str, usage: UsageSnapshot, declared: tuple[CapacityDecl, ...], registered: bool) -> dict[str, Any]:
    capacities = {(d.tier, d.backend): d.capacity_bytes for d in declared if not d.shared}
    used = {(slot.tier, slot.backend): n for slot, n in usage.owner_bytes.items() if slot.owner == instance_id}
    modules = [_module(t, b, n, capacities.get((t, b), 0), False) for (t, b), n in used.items()]
    modules += [_module(t, b, 0, c, False) for (t, b), c in capacities.items() if (t, b) not in used]
    modules.sort(key=lambda m: (m["tier"], m["backend"]))
    return {"instance_id": instance_id, "registered": registered, "declared_capacity": bool(declared), "modules": modules}


def _shared_modules(usage: UsageSnapshot, declared: dict[str, tuple[CapacityDecl, ...]]) -> list[dict[str, Any]]:
    claims: dict[tuple[Tier, str], set[int]] = {}
    for decls in declared.values():
        for d in decls:
            if d.shared:
                claims.setdefault((d.tier, d.backend), set()).add(d.capacity_bytes)
    out = []
    for slot, used in usage.owner_bytes.items():
        if slot.owner:
            continue
        agreed = claims.get((slot.tier, slot.backend), set())
        out.append(_module(slot.tier, slot.backend, used, agreed.pop() if len(agreed) == 1 else 0, True))
    return sorted(out, key=lambda m: (m["tier"], m["backend"]))
