"""Runtime L2 reconfiguration routes: `GET /reconfigure/backends`, `GET /reconfigure/<backend>/status`,
`POST /reconfigure/<backend>/<operation>` over adapters with `reconfigure_status()` /
`apply_reconfiguration(operation, body)` (the dax adapter)."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_core.errors import ConfigError, LMCacheError
from lmcache_core.l2.entry import L2AdapterEntry
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import engine_not_initialized, json_error, status_for
from lmcache_frontends.admin.openapi import (
    error_responses,
    json_body,
    json_response,
    obj,
    path_param,
)

log = logging.getLogger(__name__)

# Bad values the reference answers with 400 (its own checks); every other ConfigError is a body
# that fails validation, which the reference (pydantic) answers with 422.
_BAD_VALUE_ERRORS = ("InvalidSizeError", "UnsupportedOperationError")


def _reconfigurable(entry: L2AdapterEntry) -> Any | None:
    # A serde wrapper keeps the wrapped adapter's backend: look through it.
    for candidate in (entry.adapter, getattr(entry.adapter, "inner", None)):
        if candidate is not None and callable(getattr(candidate, "reconfigure_status", None)) and callable(
            getattr(candidate, "apply_reconfiguration", None)
        ):
            return candidate
    return None


def reconfigurable_adapters(storage: Any) -> dict[str, list[tuple[L2AdapterEntry, Any]]]:
    """Backend string -> its runtime-manageable adapters, in configuration order."""
    out: dict[str, list[tuple[L2AdapterEntry, Any]]] = {}
    for entry in storage.l2_adapters:
        target = _reconfigurable(entry)
        if target is not None:
            backend = str(getattr(target, "kind", entry.type_name)).strip().lower()
            out.setdefault(backend, []).append((entry, target))
    return out


def _status_for_reconfigure_error(exc: LMCacheError) -> int:
    if isinstance(exc, ConfigError):
        return 400 if type(exc).__name__ in _BAD_VALUE_ERRORS else 422
    return status_for(exc) or 500


def create_reconfigure_blueprint(services: Any) -> Blueprint:
    """Routes that change an L2 adapter's devices while the server runs."""
    bp = Blueprint("reconfigure", __name__)

    @bp.get("/reconfigure/backends")
    def backends() -> Response:
        engine = services.engine
        if engine is None:
            return engine_not_initialized()
        names = list(reconfigurable_adapters(engine.storage))
        return jsonify(enabled=bool(names), num_backends=len(names), backends=names)

    @bp.get("/reconfigure/<backend>/status")
    def backend_status(backend: str) -> Response:
        engine = services.engine
        if engine is None:
            return engine_not_initialized()
        name = backend.strip().lower()
        if not name:
            return json_error(400, "backend must not be empty")
        adapters = []
        for local_index, (entry, target) in enumerate(reconfigurable_adapters(engine.storage).get(name, [])):
            try:
                report = dict(target.reconfigure_status())
            except Exception as exc:  # one broken adapter must not hide the others
                log.warning("reconfigure_status of %s failed: %s", entry.name, exc, exc_info=True)
                report = {"is_healthy": False, "error": str(exc) or type(exc).__name__}
            head = {"adapter_index": local_index, "name": entry.name, "l2_index": entry.index}
            adapters.append({**head, **{k: v for k, v in report.items() if k not in head}})
        return jsonify(enabled=bool(adapters), backend=name, num_adapters=len(adapters), adapters=adapters)

    @bp.post("/reconfigure/<backend>/<operation>")
    def apply(backend: str, operation: str) -> Response:
        name, op = backend.strip().lower(), operation.strip().lower()
        engine = services.engine
        if engine is None:
            audit("reconfigure", "refused: engine not initialized", backend=name, operation=op)
            return engine_not_initialized()
        if not name or not op:
            audit("reconfigure", "rejected", backend=name, operation=op, reason="empty backend or operation")
            return json_error(400, "backend and operation must not be empty")
        raw = request.get_data()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            audit("reconfigure", "rejected", backend=name, operation=op, reason="invalid JSON body")
            return json_error(422, "request body is not valid JSON")
        if not isinstance(body, dict):
            audit("reconfigure", "rejected", backend=name, operation=op, reason="body not an object")
            return json_error(422, "request body must be a JSON object")
        index = body.get("adapter_index", 0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            audit("reconfigure", "rejected", backend=name, operation=op, reason="bad adapter_index")
            return json_error(422, f"adapter_index must be a non-negative integer, got {index!r}")
        adapters = reconfigurable_adapters(engine.storage).get(name, [])
        if index >= len(adapters):
            audit("reconfigure", "rejected", backend=name, operation=op, reason="adapter_index out of range")
            return json_error(
                404, f"adapter_index {index} out of range for backend {name!r} ({len(adapters)} adapter(s))"
            )
        entry, target = adapters[index]
        try:
            result = target.apply_reconfiguration(op, body)
        except LMCacheError as exc:
            status = _status_for_reconfigure_error(exc)
            audit("reconfigure", f"failed: {status}", backend=name, operation=op, adapter=entry.name, reason=str(exc))
            if status >= 500:
                log.error("reconfigure %s/%s failed", name, op, exc_info=exc)
                return json_error(status, "internal error" if status == 500 else str(exc))
            return json_error(status, str(exc))
        audit("reconfigure", "ok", backend=name, operation=op, adapter=entry.name, body=body)
        return jsonify(result)

    bp.openapi = _OPENAPI  # type: ignore[attr-defined]
    return bp


# ---------------------------------------------------------------------- OpenAPI

_BACKEND = path_param("backend", "Backend string from GET /reconfigure/backends (`dax`); case-insensitive")
_SIZE = {
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "description": 'A base-1024 size such as "100GiB", "512MiB", "4096"'},
    ]
}

_OPENAPI: dict[str, Any] = {
    "/reconfigure/backends": {
        "get": {
            "summary": "Backends accepted by the reconfiguration routes",
            "tags": ["reconfigure"],
            "responses": {
                "200": json_response(
                    "Backends",
                    obj(
                        {
                            "enabled": {"type": "boolean"},
                            "num_backends": {"type": "integer"},
                            "backends": {"type": "array", "items": {"type": "string"}},
                        }
                    ),
                ),
                **error_responses(503),
            },
        }
    },
    "/reconfigure/{backend}/status": {
        "get": {
            "summary": "The runtime-manageable adapters of one backend",
            "tags": ["reconfigure"],
            "parameters": [_BACKEND],
            "responses": {
                "200": json_response(
                    "Adapters (`enabled: false` and none for an unknown backend)",
                    obj(
                        {
                            "enabled": {"type": "boolean"},
                            "backend": {"type": "string"},
                            "num_adapters": {"type": "integer"},
                            "adapters": {
                                "type": "array",
                                "items": obj({"adapter_index": {"type": "integer"}}),
                            },
                        }
                    ),
                ),
                **error_responses(400, 503),
            },
        }
    },
    "/reconfigure/{backend}/{operation}": {
        "post": {
            "summary": "Apply one reconfiguration operation (dax: add, remove, resize, status)",
            "tags": ["reconfigure"],
            "parameters": [
                _BACKEND,
                path_param("operation", "dax: `add`, `remove`, `resize` or `status`; case-insensitive"),
            ],
            "requestBody": json_body(
                {
                    "type": "object",
                    "description": "Backend- and operation-specific; dax bodies reject unknown fields.",
                    "properties": {
                        "adapter_index": {"type": "integer", "minimum": 0, "default": 0},
                        "device_path": {"type": "string"},
                        "path": {"type": "string", "description": "Alias of device_path"},
                        "size": _SIZE,
                        "mode": {"type": "string", "enum": ["migrate", "evict", "drain"]},
                        "force": {"type": "boolean", "default": False},
                    },
                },
                required=False,
            ),
            "responses": {
                "200": json_response("The adapter's result", {"type": "object"}),
                **error_responses(400, 403, 404, 409, 413, 422, 503),
            },
        }
    },
}
