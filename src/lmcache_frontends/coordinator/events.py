"""Route group `events`: the cache-event stream from servers (0.5.6 `POST /events`, 0.5.0
`POST /l2/events`), applied once per (instance, incarnation, seq)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from lmcache_core.fleet.wire import parse_events, parse_legacy_events
from lmcache_core.plugin import RouteGroup
from lmcache_frontends.admin.openapi import error_responses, json_response, obj
from lmcache_frontends.coordinator.common import CoordinatorContext, body_schema, context, json_body

_BATCH = obj(
    {
        "instance_id": {"type": "string"},
        "incarnation": {"type": "integer", "minimum": 0},
        "seq": {"type": "integer", "minimum": 1},
        "event_type": {"type": "string", "enum": ["store", "delete", "access", "config"]},
        "tier": {"type": "string", "enum": ["l1", "l2"]},
        "backend": {"type": "string"},
        "entries": {"type": "array", "items": {"type": "object"}},
        "shared": {"type": "boolean"},
        "ts": {"type": "number"},
        "capacity_bytes": {"type": "integer"},
        "capacity_revision": {"type": "integer"},
    },
    required=["instance_id", "incarnation", "seq", "event_type", "tier"],
)


def create_events_blueprint(ctx: CoordinatorContext) -> RouteGroup:
    bp = Blueprint("events", __name__)

    @bp.post("/events")
    def report_cache_events() -> Response:
        summary = context().service.ingest(parse_events(json_body()))
        return jsonify({"applied": summary.applied, "duplicates": summary.duplicates, "stale": summary.stale})

    @bp.post("/l2/events")
    def report_l2_events() -> Response:
        instance_id, seq, entries = parse_legacy_events(json_body())
        return jsonify({"recorded": context().service.ingest_legacy(instance_id, seq, entries)})

    openapi: dict[str, Any] = {
        "/events": {
            "post": {
                "summary": "Apply cache-event batches (0.5.6); replays and stale incarnations are counted, not errors",
                "tags": ["events"],
                "requestBody": body_schema({"batches": {"type": "array", "items": _BATCH}}, ["batches"]),
                "responses": {
                    "200": json_response(
                        "Outcome per batch",
                        obj({"applied": {"type": "integer"}, "duplicates": {"type": "integer"}, "stale": {"type": "integer"}}),
                    ),
                    **error_responses(413, 422, 503),
                },
            }
        },
        "/l2/events": {
            "post": {
                "summary": "Apply a batch of L2 store/lookup/delete events (0.5.0)",
                "tags": ["events"],
                "requestBody": body_schema(
                    {"instance_id": {"type": "string"}, "seq": {"type": "integer", "minimum": 1}, "events": {"type": "array", "items": {"type": "object"}}},
                    ["instance_id", "seq", "events"],
                ),
                "responses": {
                    "200": json_response("Events processed", obj({"recorded": {"type": "integer"}})),
                    **error_responses(413, 422, 503),
                },
            }
        },
    }
    return RouteGroup(bp, openapi=openapi)
