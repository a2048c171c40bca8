"""Liveness routes: `/` (static) and `/healthcheck` (+ the older `/api/healthcheck`)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_core.plugin.route_context import ENGINE_NOT_INITIALIZED
from lmcache_frontends.admin.errors import engine_not_initialized
from lmcache_frontends.admin.openapi import HEALTH_OPENAPI

SERVICE_NAME = "LMCache HTTP API"


def create_health_blueprint(context: RouteContext) -> RouteGroup:
    """Routes for probes; they never call into the engine, so they answer even under load."""
    bp = Blueprint("health", __name__)

    @bp.get("/")
    def root() -> Response:
        return jsonify(status="ok", service=SERVICE_NAME)

    @bp.get("/healthcheck")
    @bp.get("/api/healthcheck")
    def healthcheck() -> Response:
        if not context.started:
            return engine_not_initialized(status="unhealthy", reason=ENGINE_NOT_INITIALIZED)
        return jsonify(status="healthy")

    return RouteGroup(bp, openapi=HEALTH_OPENAPI)
