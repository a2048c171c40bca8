"""Per-request cache routes behind `lmcache kvcache info|pin|unpin|compress`:
`GET /kvcache/requests/<request_id>` and `POST /kvcache/requests/<request_id>/{pin,unpin,compress}`.

A request is found by the core's RequestInspector, in the sessions a data path registered there
(live) or in their bounded record of recently ended requests; its chunk keys are built from the
chunk hashes the data path computed, by the same function the data path uses."""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_adapters.l2.serde import CODECS, SerdeL2Adapter, make_codec
from lmcache_core.errors import ConfigError, NotFoundError
from lmcache_core.inspection import InspectedChunk, InspectedRequest, RequestInspector
from lmcache_core.keys import ObjectKey
from lmcache_core.l1.manager import L1ObjectInfo
from lmcache_core.l1.results import OpResult
from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_core.storage_manager import StorageManager
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import json_error
from lmcache_frontends.admin.gate import require_engine
from lmcache_frontends.admin.openapi import (
    error_responses,
    json_body,
    json_response,
    obj,
    path_param,
    query_param,
)
from lmcache_frontends.admin.params import DEFAULT_SALT_ALIAS, single

log = logging.getLogger(__name__)

L2_LOOKUP_TIMEOUT_S = 5.0
RECODE_TIMEOUT_S = 120.0


class _BadRequest(ValueError):
    """A malformed parameter or body (400)."""


# ---------------------------------------------------------------------- lookup of a request


def _bound(name: str, default: int | None) -> int | None:
    raw = single(request.args, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"query parameter {name} must be an integer >= 0, got {raw!r}") from None
    if value < 0:
        raise _BadRequest(f"query parameter {name} must be an integer >= 0, got {value}")
    return value


def _find_request(inspector: RequestInspector, request_id: str) -> InspectedRequest:
    """The request's chunks within the `start`/`end` token bounds; NotFoundError when unknown."""
    start = _bound("start", 0) or 0
    end = _bound("end", None)
    try:  # bounds with end <= start are a ValueError
        return inspector.find(request_id, start, end)
    except ValueError as exc:
        raise _BadRequest(str(exc)) from None


def _l2_hits(storage: StorageManager, keys: list[ObjectKey]) -> dict[str, list[bool] | str]:
    """Per L2 adapter (`index:name`), the hit bitmap of `keys` (locks released at once) or an
    error string when the adapter did not answer in time."""
    out: dict[str, list[bool] | str] = {}
    if not keys:
        return out
    for entry in storage.l2_adapters:
        label = f"{entry.index}:{entry.name}"
        adapter = entry.adapter
        try:
            future: Future[list[bool]] = adapter.submit_lookup_and_lock(keys)
        except Exception as exc:
            out[label] = f"lookup failed: {type(exc).__name__}: {exc}"
            continue

        def release(f: Future[list[bool]], adapter: Any = adapter) -> None:
            # Runs when the lookup completes, even after we stopped waiting: no lock is leaked.
            if f.cancelled() or f.exception() is not None:
                return
            hit_keys = [k for k, hit in zip(keys, f.result(), strict=True) if hit]
            if hit_keys:
                adapter.unlock(hit_keys)

        future.add_done_callback(release)
        try:
            out[label] = list(future.result(timeout=L2_LOOKUP_TIMEOUT_S))
        except FutureTimeout:
            out[label] = f"lookup timed out after {L2_LOOKUP_TIMEOUT_S:g} s"
        except Exception as exc:
            out[label] = f"lookup failed: {type(exc).__name__}: {exc}"
    return out


def _select_adapter(storage: Any, selector: str | None) -> Any:
    """Also accepts the `index:name` labels (and bare indexes) that `info` and /status show."""
    if selector is not None:
        head = selector.split(":", 1)[0]
        if head.isdigit():
            for entry in storage.l2_adapters:
                if str(entry.index) == head and selector in (head, f"{entry.index}:{entry.name}"):
                    return entry
    return storage.find_adapter(selector)


def _url_salt(salt: str) -> str:
    return DEFAULT_SALT_ALIAS if salt == "" else salt


def _header(req: InspectedRequest) -> dict[str, Any]:
    return {
        "request_id": req.request_id,
        "state": req.state,
        "model_name": req.model_name,
        "cache_salt": _url_salt(req.cache_salt),
        "world_size": req.world_size,
        "chunk_size": req.chunk_size,
        "total_chunks": req.total_chunks,
    }


def _remaining(deadline: float | None, now: float) -> float | None:
    if deadline is None or math.isinf(deadline):
        return None
    return round(max(0.0, deadline - now), 3)


def _chunk_entry(chunk: InspectedChunk, info: L1ObjectInfo | None, l2: list[str], now: float) -> dict[str, Any]:
    return {
        "index": chunk.index,
        "token_start": chunk.token_start,
        "token_end": chunk.token_end,
        "chunk_hash": chunk.key.chunk_hash.hex(),
        "kv_rank": chunk.key.kv_rank,
        "in_l1": info is not None,
        "size_bytes": None if info is None else info.size,
        "readable": info is not None and info.readable,
        "locked": info is not None and info.locked,
        "write_locked": info is not None and info.write_locked,
        "read_lock_count": 0 if info is None else info.read_lock_count,
        "temporary": info is not None and info.temporary,
        "pinned": info is not None and info.pinned_until is not None,
        "pin_expires_in_seconds": None if info is None else _remaining(info.pinned_until, now),
        "l2_adapters": l2,
    }


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("invalid JSON body") from None
    if not isinstance(body, dict):
        raise _BadRequest("body must be a JSON object")
    return body


# ---------------------------------------------------------------------- routes


def create_requests_blueprint(context: RouteContext) -> RouteGroup:
    """Per-request info, pin/unpin against L1 eviction and L2 recompression."""
    bp = Blueprint("requests", __name__)
    app = require_engine(bp, context, audited={"pin": "kvcache-pin", "unpin": "kvcache-unpin", "compress": "kvcache-compress"})

    def rejected(action: str, req: InspectedRequest | None, reason: str, **fields: Any) -> Response:
        audit(action, "rejected", request_id=None if req is None else req.request_id, reason=reason)
        return json_error(409, reason, status="rejected", reason=reason, **fields)

    def bad(action: str, exc: Exception, audited: bool) -> Response:
        if audited:
            audit(action, "rejected", reason=str(exc))
        return json_error(400, str(exc))

    def not_found(action: str, exc: Exception, audited: bool) -> Response:
        if audited:
            audit(action, "not found", reason=str(exc))
        return json_error(404, str(exc))

    @bp.get("/kvcache/requests/<request_id>")
    def info(request_id: str) -> Response:
        try:
            req = _find_request(app().inspector, request_id)
        except _BadRequest as exc:
            return bad("kvcache-info", exc, False)
        except NotFoundError as exc:
            return not_found("kvcache-info", exc, False)
        storage = app().storage
        keys = [c.key for c in req.chunks]
        l1_info = storage.l1.inspect(keys)
        l2 = _l2_hits(storage, keys)
        now = app().clock.monotonic()
        entries = []
        for i, (chunk, info_) in enumerate(zip(req.chunks, l1_info, strict=True)):
            where = [label for label, hits in l2.items() if not isinstance(hits, str) and hits[i]]
            entries.append(_chunk_entry(chunk, info_, where, now))
        summary = {
            "chunks": len(entries),
            "in_l1": sum(e["in_l1"] for e in entries),
            "l1_bytes": sum(e["size_bytes"] or 0 for e in entries),
            "locked": sum(e["locked"] for e in entries),
            "pinned": sum(e["pinned"] for e in entries),
            "in_l2": {label: sum(hits) for label, hits in l2.items() if not isinstance(hits, str)},
            "l2_errors": {label: err for label, err in l2.items() if isinstance(err, str)},
        }
        start = _bound("start", 0) or 0
        return jsonify({**_header(req), "start": start, "end": _bound("end", None), "summary": summary, "chunks": entries})

    @bp.post("/kvcache/requests/<request_id>/pin")
    def pin(request_id: str) -> Response:
        try:
            body = _json_object(request.get_data())
            ttl = body.get("ttl_seconds")
            if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0):
                raise _BadRequest(f"ttl_seconds must be a finite number > 0 or null, got {ttl!r}")
            req = _find_request(app().inspector, request_id)
        except _BadRequest as exc:
            return bad("kvcache-pin", exc, True)
        except NotFoundError as exc:
            return not_found("kvcache-pin", exc, True)
        if not req.chunks:
            return rejected("kvcache-pin", req, f"request {request_id!r} has no chunk in the given token range")
        l1 = app().storage.l1
        keys = [c.key for c in req.chunks]
        before = l1.inspect(keys)
        missing = sum(1 for i in before if i is None or not i.readable or i.temporary)
        if missing:
            return rejected(
                "kvcache-pin",
                req,
                f"{missing} of {len(keys)} chunks of request {request_id!r} are not readable in L1 "
                "(evicted, never stored or still being written)",
            )
        used, capacity = l1.usage_bytes()
        watermark = float(context.config.eviction_trigger_watermark)
        limit = int(capacity * watermark)
        results = l1.pin(keys, None if ttl is None else float(ttl), max_pinned_bytes=limit)
        if not all(r is OpResult.SUCCESS for r in results):
            # Undo pins this call added (never those that existed before it): all or nothing.
            added = [k for k, r, b in zip(keys, results, before, strict=True) if r is OpResult.SUCCESS and b is not None and b.pinned_until is None]
            if added:
                l1.unpin(added)
            if any(r is OpResult.OUT_OF_MEMORY for r in results):
                need = sum(b.size for b in before if b is not None and b.pinned_until is None)
                reason = (
                    f"pinning {need} more bytes would leave less than {1 - watermark:.0%} of L1 "
                    f"evictable ({l1.pinned_bytes()} of {capacity} bytes pinned already, limit {limit})"
                )
            else:
                reason = f"chunks of request {request_id!r} changed state while pinning: " + ", ".join(
                    sorted({r.value for r in results if r is not OpResult.SUCCESS})
                )
            return rejected("kvcache-pin", req, reason, pinned_bytes=l1.pinned_bytes(), capacity_bytes=capacity)
        pinned_bytes = sum(b.size for b in before if b is not None)
        audit("kvcache-pin", "ok", request_id=request_id, chunks=len(keys), ttl_seconds=ttl)
        return jsonify(
            {
                **_header(req),
                "status": "ok",
                "pinned_chunks": len(keys),
                "pinned_bytes": pinned_bytes,
                "ttl_seconds": ttl,
                "l1_pinned_bytes_total": l1.pinned_bytes(),
                "l1_capacity_bytes": capacity,
            }
        )

    @bp.post("/kvcache/requests/<request_id>/unpin")
    def unpin(request_id: str) -> Response:
        try:
            req = _find_request(app().inspector, request_id)
        except _BadRequest as exc:
            return bad("kvcache-unpin", exc, True)
        except NotFoundError as exc:
            return not_found("kvcache-unpin", exc, True)
        results = app().storage.l1.unpin([c.key for c in req.chunks])
        unpinned = sum(r is OpResult.SUCCESS for r in results)
        audit("kvcache-unpin", "ok", request_id=request_id, unpinned=unpinned)
        return jsonify({**_header(req), "status": "ok", "unpinned_chunks": unpinned, "not_pinned_chunks": len(results) - unpinned})

    @bp.post("/kvcache/requests/<request_id>/compress")
    def compress(request_id: str) -> Response:
        try:
            body = _json_object(request.get_data())
            method = body.get("method")
            if method not in CODECS:
                raise _BadRequest(f"method must be one of {', '.join(CODECS)}, got {method!r}")
            selector = body.get("adapter")
            if selector is not None and not isinstance(selector, str):
                raise _BadRequest(f"adapter must be a string, got {selector!r}")
            codec_config = {"type": method, **{k: body[k] for k in ("level", "dtype") if k in body}}
            try:
                codec = make_codec(codec_config)
            except ConfigError as exc:
                raise _BadRequest(str(exc)) from None
            req = _find_request(app().inspector, request_id)
            entry = _select_adapter(app().storage, selector)
        except _BadRequest as exc:
            return bad("kvcache-compress", exc, True)
        except NotFoundError as exc:
            return not_found("kvcache-compress", exc, True)
        label = f"{entry.index}:{entry.name}"
        adapter = entry.adapter
        if not isinstance(adapter, SerdeL2Adapter):
            return rejected(
                "kvcache-compress",
                req,
                f"L2 adapter {label} stores raw bytes (no serde wrapper): a compressed object would be "
                'read back as raw KV data; configure it with a "serde" field to allow compress',
            )
        why_not = adapter.can_hold(codec)
        if why_not is not None:
            return rejected("kvcache-compress", req, why_not)
        keys = [c.key for c in req.chunks]
        try:
            outcomes = adapter.submit_recode(keys, codec).result(timeout=RECODE_TIMEOUT_S)
        except FutureTimeout:
            audit("kvcache-compress", "failed: timeout", request_id=request_id)
            return json_error(503, f"recompression did not finish within {RECODE_TIMEOUT_S:g} s")
        done = [o for o in outcomes if o is not None]
        if not done:
            return rejected(
                "kvcache-compress",
                req,
                f"none of the {len(keys)} chunks of request {request_id!r} could be re-stored in L2 adapter "
                f"{label} (not stored there, or unreadable)",
            )
        before = sum(o[0] for o in done)
        after = sum(o[1] for o in done)
        audit("kvcache-compress", "ok", request_id=request_id, adapter=label, method=method, chunks=len(done))
        return jsonify(
            {
                **_header(req),
                "status": "ok",
                "adapter": label,
                "method": method,
                "chunks": len(keys),
                "recompressed_chunks": len(done),
                "skipped_chunks": len(keys) - len(done),
                "bytes_before": before,
                "bytes_after": after,
                "ratio": round(before / after, 3) if after else None,
            }
        )

    return RouteGroup(bp, openapi=_openapi())


# ---------------------------------------------------------------------- OpenAPI

_ID = path_param("request_id", "The request id the engine used on the data path.")
_START = query_param("start", "First token of the range (default 0).", {"type": "integer", "minimum": 0})
_END = query_param("end", "Token after the range (default: the request's end).", {"type": "integer", "minimum": 0})
_NULLABLE_INT = {"type": "integer", "nullable": True}
_NULLABLE_NUM = {"type": "number", "nullable": True}
_HEADER = {
    "request_id": {"type": "string"},
    "state": {"type": "string", "enum": ["live", "ended", "expired"]},
    "model_name": {"type": "string"},
    "cache_salt": {"type": "string"},
    "world_size": {"type": "integer"},
    "chunk_size": {"type": "integer"},
    "total_chunks": {"type": "integer"},
}
_CHUNK = obj(
    {
        "index": {"type": "integer"},
        "token_start": {"type": "integer"},
        "token_end": {"type": "integer"},
        "chunk_hash": {"type": "string"},
        "kv_rank": {"type": "integer"},
        "in_l1": {"type": "boolean"},
        "size_bytes": _NULLABLE_INT,
        "readable": {"type": "boolean"},
        "locked": {"type": "boolean"},
        "write_locked": {"type": "boolean"},
        "read_lock_count": {"type": "integer"},
        "temporary": {"type": "boolean"},
        "pinned": {"type": "boolean"},
        "pin_expires_in_seconds": _NULLABLE_NUM,
        "l2_adapters": {"type": "array", "items": {"type": "string"}},
    }
)
_INFO = obj(
    {
        **_HEADER,
        "start": {"type": "integer"},
        "end": _NULLABLE_INT,
        "summary": obj(
            {
                "chunks": {"type": "integer"},
                "in_l1": {"type": "integer"},
                "l1_bytes": {"type": "integer"},
                "locked": {"type": "integer"},
                "pinned": {"type": "integer"},
                "in_l2": {"type": "object", "additionalProperties": {"type": "integer"}},
                "l2_errors": {"type": "object", "additionalProperties": {"type": "string"}},
            }
        ),
        "chunks": {"type": "array", "items": _CHUNK},
    }
)
_REJECTED = obj(
    {"status": {"type": "string", "enum": ["rejected"]}, "reason": {"type": "string"}, "error": {"type": "string"}},
    required=["status", "reason", "error"],
)
_PIN_BODY = obj({"ttl_seconds": {"type": "number", "nullable": True, "exclusiveMinimum": True, "minimum": 0}}, required=[])
_COMPRESS_BODY = obj(
    {
        "method": {"type": "string", "enum": list(CODECS)},
        "adapter": {"type": "string", "description": "L2 adapter selector (type name, kind or label); default the first"},
        "level": {"type": "integer", "description": "zstd 1..22, zlib 1..9"},
        "dtype": {"type": "string", "enum": ["bfloat16", "float16"], "description": "fp8 only (required there)"},
    },
    required=["method"],
)


def _openapi() -> dict[str, Any]:
    common_errors = error_responses(400, 404, 503)
    return {
        "/kvcache/requests/{request_id}": {
            "get": {
                "summary": "Where a live or recently ended request's chunks are: L1 (locks, pins, sizes) and each L2 adapter",
                "tags": ["kvcache"],
                "parameters": [_ID, _START, _END],
                "responses": {"200": json_response("The request's chunks", _INFO), **common_errors},
            }
        },
        "/kvcache/requests/{request_id}/pin": {
            "post": {
                "summary": "Pin the request's chunks in L1 against eviction (for ttl_seconds, or until unpinned)",
                "tags": ["kvcache"],
                "parameters": [_ID, _START, _END],
                "requestBody": json_body(_PIN_BODY, required=False),
                "responses": {
                    "200": json_response(
                        "Pinned",
                        obj(
                            {
                                **_HEADER,
                                "status": {"type": "string"},
                                "pinned_chunks": {"type": "integer"},
                                "pinned_bytes": {"type": "integer"},
                                "ttl_seconds": _NULLABLE_NUM,
                                "l1_pinned_bytes_total": {"type": "integer"},
                                "l1_capacity_bytes": {"type": "integer"},
                            }
                        ),
                    ),
                    **common_errors,
                    "409": json_response("L1 cannot hold the request's chunks", _REJECTED),
                },
            }
        },
        "/kvcache/requests/{request_id}/unpin": {
            "post": {
                "summary": "Release the pins of the request's chunks",
                "tags": ["kvcache"],
                "parameters": [_ID, _START, _END],
                "responses": {
                    "200": json_response(
                        "Unpinned",
                        obj(
                            {
                                **_HEADER,
                                "status": {"type": "string"},
                                "unpinned_chunks": {"type": "integer"},
                                "not_pinned_chunks": {"type": "integer"},
                            }
                        ),
                    ),
                    **common_errors,
                },
            }
        },
        "/kvcache/requests/{request_id}/compress": {
            "post": {
                "summary": "Re-store the request's chunks in a serde-wrapped L2 adapter with another codec",
                "tags": ["kvcache"],
                "parameters": [_ID, _START, _END],
                "requestBody": json_body(_COMPRESS_BODY),
                "responses": {
                    "200": json_response(
                        "Re-stored",
                        obj(
                            {
                                **_HEADER,
                                "status": {"type": "string"},
                                "adapter": {"type": "string"},
                                "method": {"type": "string"},
                                "chunks": {"type": "integer"},
                                "recompressed_chunks": {"type": "integer"},
                                "skipped_chunks": {"type": "integer"},
                                "bytes_before": {"type": "integer"},
                                "bytes_after": {"type": "integer"},
                                "ratio": _NULLABLE_NUM,
                            }
                        ),
                    ),
                    **common_errors,
                    "409": json_response("The adapter cannot hold per-object codecs, or nothing to re-store", _REJECTED),
                },
            }
        },
    }
