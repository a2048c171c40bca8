"""`GET /kvcache/check`: MD5 checksums over a registered engine's KV blocks (round-trip checks)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request

from lmcache_adapters.memory.faultguard import SegmentFaultError
from lmcache_adapters.transfer.layout import UnsupportedLayoutError, parse_block_ids
from lmcache_frontends.admin.errors import engine_not_initialized, json_error

log = logging.getLogger(__name__)


def _find_server(services: Any) -> Any:
    frontends = getattr(services, "server_frontends", None) or {}
    return frontends.get("zmq")


def create_kvcache_check_blueprint(services: Any) -> Blueprint:
    """The route reads the ZeroMQ frontend's registrations through `services.server_frontends`."""
    bp = Blueprint("kvcache_check", __name__)

    @bp.get("/kvcache/check")
    def kvcache_check() -> Response:
        server = _find_server(services)
        if services.engine is None or server is None:
            return engine_not_initialized()
        raw_ids = request.args.get("block_ids")
        if not raw_ids:
            return json_error(400, "block_ids is required")
        try:
            ids, ranges = parse_block_ids(raw_ids)
        except (ValueError, TypeError):
            return json_error(400, "Invalid block_ids format")
        try:
            chunk_size = int(request.args.get("chunk_size", ""))
        except ValueError:
            return json_error(400, "chunk_size must be positive")
        if chunk_size <= 0:
            return json_error(400, "chunk_size must be positive")
        try:
            instance_id = int(request.args.get("instance_id", "0"))
        except ValueError:
            return json_error(400, "instance_id must be an integer")
        layerwise = request.args.get("layerwise", "false").strip().lower() in ("1", "true", "yes")
        # Registrations belong to (client, instance_id) and HTTP names no client: the id must
        # name exactly one server-driven registration. Several (every `lmcache bench` uses 0)
        # is a conflict, never a silent pick of somebody else's tensors.
        found = [i for i in server.registrations(instance_id) if i.layout is not None]
        if not found:
            return json_error(404, f"instance_id {instance_id} not registered")
        if len(found) > 1:
            return json_error(
                409,
                f"instance_id {instance_id} is registered by {len(found)} clients; checksums would be "
                "ambiguous (give each engine its own instance id)",
            )
        try:
            sums = server.kv_checksums(found[0], ids, chunk_size, layerwise=layerwise)
        except UnsupportedLayoutError as exc:
            return json_error(501, str(exc))
        except SegmentFaultError as exc:
            return json_error(409, f"instance_id {instance_id}: {exc}")
        except (IndexError, RuntimeError) as exc:
            return json_error(400, f"Invalid block_ids format: {exc}")
        num_chunks = -(-len(ids) // chunk_size)
        return jsonify(
            status="success",
            chunk_size=chunk_size,
            num_chunks=num_chunks,
            chunk_checksums=sums,
            layerwise=layerwise,
            block_id_ranges=ranges,
        )

    return bp
