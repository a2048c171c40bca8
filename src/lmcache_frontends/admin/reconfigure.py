"""Runtime reconfiguration routes of both generations over the ReconfigureService:

- LMCache 0.5.0: `GET /reconfigure/backends`, `GET /reconfigure/<backend>/status`,
  `POST /reconfigure/<backend>/<operation>`;
- LMCache 0.5.6: `GET /reconfigure/<backend>/l2/status`, `POST /reconfigure/<backend>/l2/<operation>`,
  and the L1-on-Device-DAX routes `GET /reconfigure/dax/l1/status`,
  `POST /reconfigure/dax/l1/add|remove`.

The L1 routes change the arenas of an L1 on Device-DAX (`--l1-devdax-path`, or a DEVDAX
`--l1-manager`); a server whose L1 is in shared memory answers them as a 0.5.6 server whose L1
is not DAX-backed: the body is validated as there, then 409."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_adapters.l2.dax import InvalidSizeError, parse_size
from lmcache_core.cache_ops.reconfigure import L1_NOT_DAX, ReconfigurableAdapter, normalize
from lmcache_core.errors import InvalidRequestError, LMCacheError, NotFoundError
from lmcache_core.l1.arenas import DEFAULT_REMOVE_TIMEOUT_SECONDS, MAX_REMOVE_TIMEOUT_SECONDS
from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import (
    cache_operations,
    domain_error,
    engine_not_initialized,
    json_error,
    status_for,
)
from lmcache_frontends.admin.openapi import (
    ERROR_SCHEMA,
    detail_error_responses,
    error_responses,
    json_body,
    json_response,
    obj,
    path_param,
)
from lmcache_frontends.admin.wire import (
    BodyInvalid,
    Field,
    parse_model_body,
    parse_object_body,
    validate_model,
)

SIZE_ERROR = "size must be a positive integer byte count or a string like '100GiB'"

_DAX_L2_FIELDS: dict[str, tuple[Field, ...]] = {
    "add": (Field("adapter_index", "int", default=0), Field("device_path", "str"), Field("size", "strict_int_or_str")),
    "remove": (
        Field("adapter_index", "int", default=0),
        Field("device_path", "str"),
        Field("mode", "literal", default="migrate", choices=("migrate", "evict", "drain")),
        Field("force", "bool", default=False),
    ),
    "resize": (
        Field("adapter_index", "int", default=0),
        Field("device_path", "str"),
        Field("size", "strict_int_or_str"),
        Field("mode", "literal", default="migrate", choices=("migrate", "evict")),
        Field("force", "bool", default=False),
    ),
}
_GENERIC_L2_FIELDS = (Field("adapter_index", "int", default=0),)
_L1_FIELDS = {
    "add": (Field("device_path", "str"), Field("size", "strict_int_or_str")),
    "remove": (
        Field("device_path", "str"),
        Field("mode", "enum", default="drain", choices=("drain",)),
        # Ours, beyond 0.5.6 (which takes neither): drop objects still locked at the deadline,
        # and how long to wait for them first.
        Field("force", "bool", default=False),
        Field("timeout_seconds", "int", default=int(DEFAULT_REMOVE_TIMEOUT_SECONDS), ge=0, le=int(MAX_REMOVE_TIMEOUT_SECONDS)),
    ),
}


def _status_document(ops: Any, backend: str) -> dict[str, Any]:
    adapters = ops.reconfigure.status(backend)
    return {"enabled": bool(adapters), "backend": normalize(backend, "backend"), "num_adapters": len(adapters), "adapters": adapters}


def _dax_l2_payload(operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """0.5.6's dax L2 body checks: (adapter_index, the adapter's payload). BodyInvalid (422) for
    a body that fails validation, InvalidSizeError for a bad size, InvalidRequestError for an
    operation dax does not know (both 400)."""
    fields = _DAX_L2_FIELDS.get(operation)
    if fields is None:
        raise InvalidRequestError(f"unsupported dax reconfigure operation: {operation}")
    parsed = validate_model(fields, body)
    payload = {k: v for k, v in parsed.items() if k != "adapter_index"}
    if "size" in payload:
        payload["size"] = parse_size(payload["size"])
    return parsed["adapter_index"], payload


def create_reconfigure_blueprint(context: RouteContext) -> RouteGroup:
    """Routes that change an L2 adapter's devices while the server runs."""
    bp = Blueprint("reconfigure", __name__)

    def apply(target: ReconfigurableAdapter, name: str, op: str, payload: Mapping[str, Any]) -> Response:
        try:
            result = context.app().cache_ops.reconfigure.apply(target, op, payload)
        except LMCacheError as exc:
            status = status_for(exc, of_body=True) or 500
            audit("reconfigure", f"failed: {status}", backend=name, operation=op, adapter=target.entry.name, reason=str(exc))
            return domain_error(exc, of_body=True)
        audit("reconfigure", "ok", backend=name, operation=op, adapter=target.entry.name, body=dict(payload))
        return jsonify(result)

    # -- LMCache 0.5.0 ------------------------------------------------------------------------

    @bp.get("/reconfigure/backends")
    def backends() -> Response:
        ops = cache_operations(context)
        if ops is None:
            return engine_not_initialized()
        names = list(ops.reconfigure.backends())
        return jsonify(enabled=bool(names), num_backends=len(names), backends=names)

    @bp.get("/reconfigure/<backend>/status")
    def backend_status(backend: str) -> Response:
        ops = cache_operations(context)
        if ops is None:
            return engine_not_initialized()
        try:
            return jsonify(_status_document(ops, backend))
        except InvalidRequestError:
            return json_error(400, "backend must not be empty")

    @bp.post("/reconfigure/<backend>/<operation>")
    def apply_v1(backend: str, operation: str) -> Response:
        name, op = backend.strip().lower(), operation.strip().lower()
        ops = cache_operations(context)
        if ops is None:
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
        try:
            target = ops.reconfigure.resolve(name, index)
        except NotFoundError as exc:
            audit("reconfigure", "rejected", backend=name, operation=op, reason="adapter_index out of range")
            return json_error(404, str(exc))
        return apply(target, name, op, body)

    # -- LMCache 0.5.6: L2 --------------------------------------------------------------------

    @bp.get("/reconfigure/<backend>/l2/status")
    def l2_status(backend: str) -> Response:
        ops = cache_operations(context)
        if ops is None:
            return engine_not_initialized()
        try:
            return jsonify(_status_document(ops, backend))
        except InvalidRequestError as exc:
            return json_error(400, str(exc))

    @bp.post("/reconfigure/<backend>/l2/<operation>")
    def l2_apply(backend: str, operation: str) -> Response:
        try:
            body = parse_object_body()
        except BodyInvalid as exc:
            audit("reconfigure", "rejected", backend=backend, operation=operation, reason=str(exc))
            return exc.response()
        ops = cache_operations(context)
        if ops is None:
            audit("reconfigure", "refused: engine not initialized", backend=backend, operation=operation)
            return engine_not_initialized()
        try:
            name, op = normalize(backend, "backend"), normalize(operation, "operation")
            if name == "dax":
                index, payload = _dax_l2_payload(op, body)
            else:
                index = validate_model(_GENERIC_L2_FIELDS, {"adapter_index": body.get("adapter_index", 0)})["adapter_index"]
                payload = {k: v for k, v in body.items() if k != "adapter_index"}
        except BodyInvalid as exc:
            audit("reconfigure", "rejected", backend=backend, operation=operation, reason=str(exc))
            return exc.response()
        except InvalidSizeError:
            audit("reconfigure", "rejected", backend=backend, operation=operation, reason=SIZE_ERROR)
            return json_error(400, SIZE_ERROR)
        except InvalidRequestError as exc:
            audit("reconfigure", "rejected", backend=backend, operation=operation, reason=str(exc))
            return json_error(400, str(exc))
        try:
            target = ops.reconfigure.resolve(name, index)
        except NotFoundError:
            audit("reconfigure", "rejected", backend=name, operation=op, reason="adapter not found")
            return json_error(404, f"{name} adapter not found")
        return apply(target, name, op, payload)

    # -- LMCache 0.5.6: L1 on Device-DAX --------------------------------------------------------

    @bp.get("/reconfigure/dax/l1/status")
    def l1_status() -> Response:
        ops = cache_operations(context)
        if ops is None:
            return engine_not_initialized()
        try:
            return jsonify(arenas=ops.reconfigure.l1_arenas().statuses())
        except LMCacheError as exc:
            return domain_error(exc, of_body=True)

    def l1_change(operation: str) -> Response:
        # 0.5.6's order: the body (422), the engine (503), the size (400), then L1's state (409).
        try:
            body = parse_model_body(_L1_FIELDS[operation])
        except BodyInvalid as exc:
            audit("reconfigure-l1", "rejected", operation=operation, reason=str(exc))
            return exc.response()
        ops = cache_operations(context)
        if ops is None:
            audit("reconfigure-l1", "refused: engine not initialized", operation=operation)
            return engine_not_initialized()
        try:
            size = parse_size(body["size"]) if "size" in body else None
        except InvalidSizeError:
            audit("reconfigure-l1", "rejected", operation=operation, reason=SIZE_ERROR)
            return json_error(400, SIZE_ERROR)
        path = body["device_path"]
        try:
            arenas = ops.reconfigure.l1_arenas()
        except LMCacheError as exc:
            audit("reconfigure-l1", "refused: L1 is not on Device-DAX", operation=operation, device_path=path)
            return domain_error(exc, of_body=True)
        try:
            if size is not None:
                result: dict[str, Any] = {"added": arenas.add(path, size)}
            else:
                status = arenas.remove(path, force=body["force"], timeout_seconds=body["timeout_seconds"])
                result = {"removed": {"device_path": status["device_path"], "arenas": [status]}}
        except LMCacheError as exc:
            status_code = status_for(exc, of_body=True) or 500
            audit("reconfigure-l1", f"failed: {status_code}", operation=operation, device_path=path, reason=str(exc))
            return domain_error(exc, of_body=True)
        audit("reconfigure-l1", "ok", operation=operation, **{k: v for k, v in body.items() if k != "mode"}, result=result)
        return jsonify(result)

    @bp.post("/reconfigure/dax/l1/add")
    def l1_add() -> Response:
        return l1_change("add")

    @bp.post("/reconfigure/dax/l1/remove")
    def l1_remove() -> Response:
        return l1_change("remove")

    return RouteGroup(bp, openapi=_OPENAPI)


# ---------------------------------------------------------------------- OpenAPI

_BACKEND = path_param("backend", "Backend string from GET /reconfigure/backends (`dax`); case-insensitive")
_SIZE = {
    "oneOf": [
        {"type": "integer", "minimum": 1},
        {"type": "string", "description": 'A base-1024 size such as "100GiB", "512MiB", "4096"'},
    ]
}
_STATUS_DOCUMENT = obj(
    {
        "enabled": {"type": "boolean"},
        "backend": {"type": "string"},
        "num_adapters": {"type": "integer"},
        "adapters": {
            "type": "array",
            "items": obj({"adapter_index": {"type": "integer"}}),
        },
    }
)
_OPERATION_BODY = {
    "type": "object",
    "description": "Backend- and operation-specific; dax bodies reject unknown fields.",
    "properties": {
        "adapter_index": {"type": "integer", "minimum": 0, "default": 0},
        "device_path": {"type": "string"},
        "size": _SIZE,
        "mode": {"type": "string", "enum": ["migrate", "evict", "drain"]},
        "force": {"type": "boolean", "default": False},
    },
}
_ARENA = obj(
    {
        "device_path": {"type": "string"},
        "size_in_bytes": {"type": "integer"},
        "used_bytes": {"type": "integer"},
        "free_bytes": {"type": "integer"},
        "active_allocations": {"type": "integer"},
        "state": {"type": "string", "enum": ["active", "draining", "removed"]},
        "is_primary": {"type": "boolean"},
    }
)
_L1_409 = {
    "409": json_response(
        f"L1 is not on Device-DAX (`{L1_NOT_DAX}`), or the request conflicts with the arenas "
        "(already mapped, primary, cannot be opened, sized or mapped)",
        ERROR_SCHEMA,
    )
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
                "200": json_response("Adapters (`enabled: false` and none for an unknown backend)", _STATUS_DOCUMENT),
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
            "requestBody": json_body(_OPERATION_BODY, required=False),
            "responses": {
                "200": json_response("The adapter's result", {"type": "object"}),
                **error_responses(400, 403, 404, 409, 413, 422, 503),
            },
        }
    },
    "/reconfigure/{backend}/l2/status": {
        "get": {
            "summary": "The runtime-manageable L2 adapters of one backend (LMCache 0.5.6)",
            "tags": ["reconfigure"],
            "parameters": [path_param("backend", "A `type_name` of GET /config/adapters whose `reconfigurable` is true")],
            "responses": {
                "200": json_response("Adapters (`enabled: false` and none for an unknown backend)", _STATUS_DOCUMENT),
                **error_responses(400, 503),
            },
        }
    },
    "/reconfigure/{backend}/l2/{operation}": {
        "post": {
            "summary": "Apply one operation to an L2 adapter of a backend (LMCache 0.5.6; dax: add, remove, resize)",
            "tags": ["reconfigure"],
            "parameters": [
                path_param("backend", "A `type_name` of GET /config/adapters whose `reconfigurable` is true"),
                path_param("operation", "dax: `add`, `remove` or `resize`; case-insensitive"),
            ],
            "requestBody": json_body(_OPERATION_BODY),
            "responses": {
                "200": json_response("The adapter's result", {"type": "object"}),
                **error_responses(400, 403, 404, 409, 413, 503),
                **detail_error_responses(422),
            },
        }
    },
    "/reconfigure/dax/l1/status": {
        "get": {
            "summary": "The Device-DAX arenas of L1 (LMCache 0.5.6), primary first",
            "tags": ["reconfigure"],
            "responses": {
                "200": json_response("Every mapped arena, active or draining", obj({"arenas": {"type": "array", "items": _ARENA}})),
                **_L1_409,
                **error_responses(503),
            },
        }
    },
    "/reconfigure/dax/l1/add": {
        "post": {
            "summary": "Map one more Device-DAX device (or regular file) into L1; capacity grows at once (LMCache 0.5.6)",
            "tags": ["reconfigure"],
            "requestBody": json_body(obj({"device_path": {"type": "string"}, "size": _SIZE}, extra=False)),
            "responses": {
                "200": json_response("The new arena", obj({"added": _ARENA})),
                **_L1_409,
                **error_responses(400, 413, 503),
                **detail_error_responses(422),
            },
        }
    },
    "/reconfigure/dax/l1/remove": {
        "post": {
            "summary": "Drain a Device-DAX arena out of L1: no new objects, its objects leave, then it is unmapped (LMCache 0.5.6)",
            "tags": ["reconfigure"],
            "requestBody": json_body(
                obj(
                    {
                        "device_path": {"type": "string"},
                        "mode": {"type": "string", "enum": ["drain"], "default": "drain"},
                        "force": {
                            "type": "boolean",
                            "default": False,
                            "description": "Not in 0.5.6: objects still locked at the deadline leave too "
                            "(their memory is freed when copies in flight finish)",
                        },
                        "timeout_seconds": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": int(MAX_REMOVE_TIMEOUT_SECONDS),
                            "default": int(DEFAULT_REMOVE_TIMEOUT_SECONDS),
                            "description": "Not in 0.5.6: how long to wait for locked objects",
                        },
                    },
                    required=["device_path"],
                    extra=False,
                )
            ),
            "responses": {
                "200": json_response(
                    "The arena afterwards: `removed`, or `draining` while objects are locked or copies in flight",
                    obj({"removed": obj({"device_path": {"type": "string"}, "arenas": {"type": "array", "items": _ARENA}})}),
                ),
                **_L1_409,
                **error_responses(404, 413, 503),
                **detail_error_responses(422),
            },
        }
    },
}
