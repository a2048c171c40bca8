"""Helpers shared by the coordinator's route groups: the request context, JSON bodies, salts in
paths, GiB conversions and OpenAPI schema fragments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app, request

from lmcache_core.errors import InvalidKeyError, UnprocessableError
from lmcache_core.fleet.model import KeyRecord
from lmcache_core.fleet.service import FleetService
from lmcache_core.fleet.wire import record_placements
from lmcache_core.keys import ObjectKey
from lmcache_frontends.admin.openapi import obj
from lmcache_frontends.admin.params import bounded_int, salt_from_url
from lmcache_frontends.coordinator.config import CoordinatorConfig

GIB = 1024**3
CONTEXT_KEY = "lmcache.coordinator"


@dataclass
class CoordinatorContext:
    """What the route groups receive: the settings and the fleet service."""

    config: CoordinatorConfig
    service: FleetService
    started_at: float = 0.0


def context() -> CoordinatorContext:
    ctx: CoordinatorContext = current_app.extensions[CONTEXT_KEY]
    return ctx


def json_body() -> Any:
    """The request's JSON body; UnprocessableError (422) when it is missing or not JSON."""
    body = request.get_json(silent=True, force=True) if request.content_length else None
    if body is None:
        raise UnprocessableError("the request body must be a JSON object")
    return body


def path_salt(value: str) -> str:
    """A cache_salt from a URL path (`_default` = the empty salt); 400 when invalid."""
    try:
        return salt_from_url(value)
    except InvalidKeyError as exc:
        raise InvalidKeyError(f"invalid cache_salt in the path: {exc}") from None


def gib(nbytes: int) -> float:
    return nbytes / GIB


def to_bytes(limit_gb: float) -> int:
    return int(limit_gb * GIB)


def key_result(key: ObjectKey, record: KeyRecord | None) -> dict[str, Any]:
    """One `/directory/lookup` result (0.5.6 shape; token ids are not kept)."""
    return {
        "key": key.to_json(),
        "placements": record_placements(record),
        "token_ids": [],
        "access_count": record.access_count if record is not None else 0,
    }


def int_arg(name: str, default: int, *, lo: int, hi: int) -> int:
    return bounded_int(name, request.args.get(name), default, lo=lo, hi=hi)


# ---------------------------------------------------------------------- OpenAPI fragments

KEY_SCHEMA = obj(
    {
        "chunk_hash_hex": {"type": "string"},
        "model_name": {"type": "string"},
        "kv_rank": {"type": "integer"},
        "object_group_id": {"type": "integer"},
        "cache_salt": {"type": "string"},
    },
    required=["chunk_hash_hex", "model_name", "kv_rank"],
)
PLACEMENT_SCHEMA = obj(
    {
        "instance_id": {"type": "string"},
        "incarnation": {"type": "integer"},
        "tier": {"type": "string", "enum": ["l1", "l2"]},
        "backend": {"type": "string"},
        "size_bytes": {"type": "integer"},
        "shared": {"type": "boolean"},
    }
)
TOKEN_QUERY_PROPS: dict[str, Any] = {
    "model_name": {"type": "string"},
    "world_size": {"type": "integer", "minimum": 1, "default": 1},
    "cache_salt": {"type": "string", "default": ""},
    "token_ids": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "tokens_b64": {"type": "string", "description": "Base64 of little-endian uint32 token ids."},
}


def body_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": obj(properties, required=required)}}}
