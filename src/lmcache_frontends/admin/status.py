"""Inspection routes: `/status` (+ `/api/status`), `/conf`, `/version`, `/lmc_version`, `/commit_id`."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from lmcache_core.status import safe_report
from lmcache_frontends import version
from lmcache_frontends.admin.errors import engine_not_initialized, json_error
from lmcache_frontends.admin.openapi import STATUS_OPENAPI

CONFIGS_NOT_INITIALIZED = "configs not initialized"


def create_status_blueprint(services: Any) -> Blueprint:
    """The status tree, the effective configuration and the version descriptors."""
    bp = Blueprint("status", __name__)

    @bp.get("/status")
    @bp.get("/api/status")
    def status() -> Response:
        engine = services.engine
        if engine is None:
            return engine_not_initialized()
        # A component whose report raises shows up as an unhealthy node instead of a 500,
        # so an operator still sees the rest of the tree.
        return jsonify(safe_report(engine))

    @bp.get("/conf")
    def conf() -> Response:
        config = getattr(services, "config", None)
        if config is None:
            return json_error(503, CONFIGS_NOT_INITIALIZED)
        # The reference returns one indented document; keep that for people reading it raw.
        text = json.dumps(config.to_public_dict(), indent=2, default=current_app.json.default)  # type: ignore[attr-defined]
        return Response(text + "\n", mimetype="application/json")

    @bp.get("/version")
    def combined_version() -> Response:
        return jsonify(version.combined_version())

    @bp.get("/lmc_version")
    def lmc_version() -> Response:
        return jsonify(version.package_version())

    @bp.get("/commit_id")
    def commit_id() -> Response:
        return jsonify(version.commit_id())

    bp.openapi = STATUS_OPENAPI  # type: ignore[attr-defined]
    return bp
