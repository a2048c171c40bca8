"""Configuration routes of LMCache 0.5.6: `GET /config` (the configuration by section, as 0.5.0's
`GET /conf` plus an `http` section) and `GET /config/adapters` (the live L2 adapter inventory)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_frontends.admin.errors import cache_operations, json_error
from lmcache_frontends.admin.openapi import (
    adapters_document,
    detail_error_responses,
    error_responses,
    json_response,
    obj,
)
from lmcache_frontends.admin.wire import SERVER_NOT_INITIALIZED, detail_error

CONFIGS_NOT_INITIALIZED = "configs not initialized"


def config_response(context: RouteContext, *, http_section: bool) -> Response:
    """The configuration the process runs with, secrets redacted, as one indented document (the
    reference returns it so, for people reading it raw); 503 before it is known."""
    config = context.config
    if config is None:
        return json_error(503, CONFIGS_NOT_INITIALIZED)
    document = config.to_public_dict()
    if http_section:
        document["http"] = {"http_host": config.http_host, "http_port": config.http_port}
    text = json.dumps(document, indent=2, default=current_app.json.default)  # type: ignore[attr-defined]
    return Response(text + "\n", mimetype="application/json")


def create_config_blueprint(context: RouteContext) -> RouteGroup:
    """The configuration and the L2 adapter inventory."""
    bp = Blueprint("config", __name__)

    @bp.get("/config")
    def config() -> Response:
        return config_response(context, http_section=True)

    @bp.get("/config/adapters")
    def adapters() -> Response:
        ops = cache_operations(context)
        if ops is None:
            return detail_error(503, SERVER_NOT_INITIALIZED)
        return jsonify(
            adapters=[
                {
                    "index": a.index,
                    "type_name": a.kind,
                    "tier": "l2",
                    "primary": a.primary,
                    "reconfigurable": a.reconfigurable,
                }
                for a in ops.objects.adapters()
            ]
        )

    return RouteGroup(bp, openapi=_OPENAPI)


_SECTION = {"type": "object"}

_OPENAPI: dict[str, Any] = {
    "/config": {
        "get": {
            "summary": "The configuration by section, secrets redacted (LMCache 0.5.6; `GET /conf` plus `http`)",
            "tags": ["status"],
            "responses": {
                "200": json_response(
                    "Configuration by section",
                    obj({"mp": _SECTION, "storage_manager": _SECTION, "observability": _SECTION, "coordinator": _SECTION, "http": _SECTION}),
                ),
                **error_responses(503),
            },
        }
    },
    "/config/adapters": {
        "get": {
            "summary": "Every configured L2 adapter; `type_name` of a reconfigurable one is a `{backend}` (LMCache 0.5.6)",
            "tags": ["l2"],
            "responses": {
                "200": json_response(
                    "Adapters (an empty list when none is configured)",
                    adapters_document(
                        type_name={"type": "string", "description": "The adapter kind (`fs`, `s3`, `dax`...)"},
                        tier={"type": "string", "enum": ["l2"]},
                        primary={"type": "boolean"},
                        reconfigurable={"type": "boolean"},
                    ),
                ),
                **detail_error_responses(503),
            },
        }
    },
}
