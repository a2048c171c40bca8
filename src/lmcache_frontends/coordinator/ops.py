"""Route group `ops`: the probe, Prometheus metrics, the coordinator's status and its OpenAPI
document."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from lmcache_core.errors import LMCacheError
from lmcache_core.fleet.model import Tier
from lmcache_core.fleet.service import RESYNC_FLAG, FleetService
from lmcache_core.plugin import RouteGroup
from lmcache_frontends import version
from lmcache_frontends.admin.openapi import (
    collect,
    error_responses,
    json_response,
    obj,
    path_param,
    text_response,
)
from lmcache_frontends.coordinator.common import CoordinatorContext, context

TITLE = "LMCache fleet coordinator API"
MAX_SALT_LABELS = 1000


class FleetCollector:
    """Prometheus metrics read from the fleet store at scrape time (fleet totals, the same on
    every coordinator)."""

    def __init__(self, service: FleetService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        up = GaugeMetricFamily("lmcache_coordinator_store_up", "1 when the fleet store answers")
        try:
            usage = svc.usage()
            counters = svc.store.counters()
            instances = len(svc.live_instances())
        except LMCacheError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield GaugeMetricFamily("lmcache_coordinator_instances", "Registered servers", value=instances)
        yield GaugeMetricFamily("lmcache_coordinator_keys", "Keys in the directory", value=usage.num_keys)
        for name, doc, table in (
            ("lmcache_coordinator_key_directory_placements", "Placements per tier", usage.placements),
            ("lmcache_coordinator_key_directory_placement_bytes", "Bytes of the placements per tier", usage.placement_bytes),
            ("lmcache_mp_key_directory_placement_count", "Placements per tier (LMCache 0.5.6 name)", usage.placements),
            ("lmcache_mp_key_directory_placement_size_bytes", "Bytes per tier (LMCache 0.5.6 name)", usage.placement_bytes),
        ):
            family = GaugeMetricFamily(name, doc, labels=["tier"])
            for tier in Tier:
                family.add_metric([tier.value], table[tier])
            yield family
        salts = GaugeMetricFamily("lmcache_coordinator_salt_usage_bytes", "Fleet L2 bytes per cache_salt", labels=["cache_salt"])
        for salt, nbytes in sorted(usage.salt_bytes[Tier.L2].items())[:MAX_SALT_LABELS]:
            salts.add_metric([salt or "_default"], nbytes)
        yield salts
        batches = CounterMetricFamily("lmcache_coordinator_event_batches", "Event batches by outcome", labels=["outcome"])
        for outcome in ("applied", "duplicate", "stale"):
            batches.add_metric([outcome], counters.get(f"batches_{outcome}", 0))
        yield batches
        yield CounterMetricFamily("lmcache_coordinator_events", "Event entries applied", value=counters.get("events_applied", 0))
        report = svc.last_eviction
        leader = GaugeMetricFamily("lmcache_coordinator_eviction_leader", "1 when this coordinator runs the eviction loop")
        leader.add_metric([], 1 if report is not None and report.leader else 0)
        yield leader


def create_ops_blueprint(ctx: CoordinatorContext) -> RouteGroup:
    bp = Blueprint("ops", __name__)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(ctx.service))

    @bp.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "healthy"})

    @bp.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @bp.get("/fleet/status")
    def status() -> Response:
        return jsonify(fleet_status(context()))

    @bp.get("/openapi.json")
    def openapi_document() -> Response:
        doc = collect(current_app)
        _declare_path_parameters(doc)
        doc["info"]["title"] = TITLE
        doc["info"]["description"] = "The fleet coordinator (lmcache coordinator); see docs/fleet.md."
        return jsonify(doc)

    openapi: dict[str, Any] = {
        "/healthz": {
            "get": {"summary": "Liveness probe (open)", "tags": ["ops"], "responses": {"200": json_response("Alive", obj({"status": {"type": "string"}}))}}
        },
        "/metrics": {
            "get": {"summary": "Prometheus metrics of the fleet", "tags": ["ops"], "responses": {"200": text_response("Prometheus text format")}}
        },
        "/fleet/status": {
            "get": {
                "summary": "This coordinator, its store, the stream positions, the eviction loop",
                "tags": ["ops"],
                "responses": {"200": json_response("Status", obj({"is_healthy": {"type": "boolean"}}, required=["is_healthy"])), **error_responses(503)},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This OpenAPI 3 document", "tags": ["ops"], "responses": {"200": json_response("The document", obj({"openapi": {"type": "string"}}))}}
        },
    }
    return RouteGroup(bp, openapi=openapi)


_PATH_PARAMS = {
    "instance_id": "A registered server's id",
    "cache_salt": "The tenant (`_default` = the empty salt)",
    "request_id": "The id the server gave the prefetch",
}


def _declare_path_parameters(doc: dict[str, Any]) -> None:
    # Every `{name}` of a path is a required path parameter of each of its operations.
    for path, operations in doc["paths"].items():
        for name in re.findall(r"{(\w+)}", path):
            for operation in operations.values():
                params = operation.setdefault("parameters", [])
                if not any(p.get("in") == "path" and p.get("name") == name for p in params):
                    params.insert(0, path_param(name, _PATH_PARAMS.get(name, name)))


def fleet_status(ctx: CoordinatorContext) -> dict[str, Any]:
    """The status tree of `GET /fleet/status`; a store that does not answer makes it unhealthy."""
    svc = ctx.service
    reachable = svc.store.ping()
    out: dict[str, Any] = {
        "is_healthy": reachable,
        "coordinator": {
            "id": svc.holder,
            "version": version.package_version() or "0",
            "uptime_seconds": round(time.time() - ctx.started_at, 3) if ctx.started_at else 0.0,
            "config": ctx.config.to_public_dict(),
        },
        "store": {**svc.store.describe(), "reachable": reachable},
    }
    report = svc.last_eviction
    out["eviction"] = {"leader": bool(report and report.leader), "last_cycle": report.summary() if report else None}
    if not reachable:
        return out
    counters = svc.store.counters()
    positions = svc.stream_positions()
    out["instances"] = {
        r.info.instance_id: {
            "ip": r.info.ip,
            "http_port": r.info.http_port,
            "lease_expires_in_seconds": round(r.lease_until - svc.clock.time(), 3),
            "stream": (
                {"incarnation": c.incarnation, "seq": c.seq, "gap_detected": c.gap}
                if (c := positions.get(r.info.instance_id)) is not None
                else None
            ),
            "events_applied": counters.get(f"events_applied:{r.info.instance_id}", 0),
        }
        for r in svc.store.instances()
    }
    out["ingest"] = {k: v for k, v in counters.items() if ":" not in k}
    out["resync"] = svc.store.get_flag(RESYNC_FLAG)
    return out
