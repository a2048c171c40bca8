"""Cache-control routes: `POST /clear-cache` (+ `/api/clear-cache`), optionally scoped to one
tenant (`cache_salt`) or model (`model_name`)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_core.errors import InvalidKeyError
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import (
    ENGINE_NOT_INITIALIZED,
    INTERNAL_ERROR,
    engine_not_initialized,
    json_error,
)
from lmcache_frontends.admin.openapi import CACHE_OPENAPI
from lmcache_frontends.admin.params import optional_model_name, optional_salt

log = logging.getLogger(__name__)


def create_cache_blueprint(services: Any) -> Blueprint:
    """Routes that drop KV data from L1."""
    bp = Blueprint("cache", __name__)

    @bp.post("/clear-cache")
    @bp.post("/api/clear-cache")
    def clear_cache() -> Response:
        # The request body is ignored (documented); only the query string matters.
        engine = services.engine
        if engine is None:
            audit("clear-cache", "refused: engine not initialized")
            return engine_not_initialized(status="error", reason=ENGINE_NOT_INITIALIZED)
        try:
            cache_salt = optional_salt(request.args)
            model_name = optional_model_name(request.args)
        except InvalidKeyError as exc:
            audit("clear-cache", "rejected", reason=str(exc))
            return json_error(400, str(exc), status="error", reason=str(exc))
        try:
            removed = engine.storage.clear_l1(force=True, cache_salt=cache_salt, model_name=model_name)
        except Exception:
            log.exception("clear-cache failed")
            audit("clear-cache", "failed", cache_salt=cache_salt, model_name=model_name)
            return json_error(500, INTERNAL_ERROR, status="error", reason=INTERNAL_ERROR)
        audit("clear-cache", "ok", cache_salt=cache_salt, model_name=model_name, removed_objects=removed)
        return jsonify(status="ok")

    bp.openapi = CACHE_OPENAPI  # type: ignore[attr-defined]
    return bp
