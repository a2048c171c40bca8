"""Inspection routes: `/status` (+ `/api/status`), `/conf`, `/version`, `/lmc_version`, `/commit_id`."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_core.status import safe_report
from lmcache_frontends import version
from lmcache_frontends.admin.config import config_response
from lmcache_frontends.admin.errors import engine_not_initialized
from lmcache_frontends.admin.openapi import STATUS_OPENAPI


def create_status_blueprint(context: RouteContext) -> RouteGroup:
    """The status tree, the effective configuration and the version descriptors."""
    bp = Blueprint("status", __name__)

    @bp.get("/status")
    @bp.get("/api/status")
    def status() -> Response:
        if not context.started:
            return engine_not_initialized()
        # A component whose report raises shows up as an unhealthy node instead of a 500,
        # so an operator still sees the rest of the tree.
        return jsonify(safe_report(context.app().engine))

    @bp.get("/conf")
    def conf() -> Response:
        return config_response(context, http_section=False)

    @bp.get("/version")
    def combined_version() -> Response:
        return jsonify(version.combined_version())

    @bp.get("/lmc_version")
    def lmc_version() -> Response:
        return jsonify(version.package_version())

    @bp.get("/commit_id")
    def commit_id() -> Response:
        return jsonify(version.commit_id())

    return RouteGroup(bp, openapi=STATUS_OPENAPI)
