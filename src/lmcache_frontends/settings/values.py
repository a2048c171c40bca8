"""The server's setting vocabulary: named choices, the value checks of its options, the
LMCache 0.5.6 `--l1-manager` object. Section modules declare their settings with these."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmcache_frontends.options import (
    one_of,
)

ENV_PREFIX = "LMCACHE_"
REDACTED = "***"

HASH_ALGORITHMS = ("blake3", "xxh3", "sha256", "builtin")
EVICTION_POLICIES = ("LRU", "IsolatedLRU", "noop")
TRANSFER_MODES = ("auto", "engine_driven", "lmcache_driven")
PROTOCOLS = ("auto", "0.5.0", "0.5.6")
L2_PREFETCH_POLICIES = ("default", "retain")
L2_STORE_POLICIES = ("default", "skip_l1")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Names of JSON fields inside --l2-adapter that /conf must not echo (S3 keys, tokens, ...).
SECRET_FIELD_RE = re.compile(r"secret|token|password|passwd|credential|access_key|private_key", re.I)

def check_copy_threads(value: int) -> int:
    if not 0 <= value <= 64:
        raise ValueError(f"must be in 0..64 (0 = the CPUs available, at most 4), got {value}")
    return value


def check_frame_bytes(value: int) -> int:
    if not 1 << 16 <= value <= 1 << 32:
        raise ValueError(f"must be a byte count from 65536 to 4294967296, got {value}")
    return value


def check_tokens_per_key(value: int) -> int:
    if not 1 <= value <= 1 << 26:
        raise ValueError(f"must be in 1..67108864, got {value}")
    return value


def check_bytes_or_auto(value: int) -> int:
    if value < 0:
        raise ValueError(f"must be a byte count >= 0 (0 = automatic), got {value}")
    return value


# sun_path holds 108 bytes with its terminating NUL on Linux.
_MAX_IPC_PATH_BYTES = 107


def check_ipc_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if "\x00" in value or value.endswith("/"):
        raise ValueError(f"must be a file path without NUL, got {value!r}")
    if len(value.encode()) > _MAX_IPC_PATH_BYTES:
        raise ValueError(f"must be at most {_MAX_IPC_PATH_BYTES} bytes (a Unix socket path), got {len(value.encode())}")
    return value


def check_file_mode(value: str) -> str:
    try:
        mode = int(value, 8)
    except (TypeError, ValueError):
        raise ValueError(f"must be an octal permission mode such as 0600 or 0660, got {value!r}") from None
    if not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        raise ValueError(f"must be a permission mode in 0600..0777 that keeps the owner's rw bits, got {value!r}")
    return value


def check_nt_threshold(value: int) -> int:
    # glibc ignores non-temporal thresholds below 0x4040 (its tunable's minimum).
    if value != 0 and not 0x4040 <= value <= 1 << 40:
        raise ValueError(f"must be 0 (off) or a byte count from 16448 (0x4040), got {value}")
    return value


def check_shm_suffix(value: str) -> str:
    if "/" in value or "\x00" in value:
        raise ValueError(f"must not contain '/' or NUL, got {value!r}")
    return value


def check_l2_adapter_json(value: str) -> str:
    # Structure only; the adapter registry checks kinds and fields at bootstrap.
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(obj, dict):
        raise ValueError("must be a JSON object")
    if not isinstance(obj.get("type"), str):
        raise ValueError('needs a string "type" field')
    return json.dumps(obj, sort_keys=False)


def check_l1_manager_json(value: str) -> str:
    # The whole object is checked here, so a bad one stops the start with the field named.
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON: {exc.msg} at char {exc.pos}") from None
    parse_l1_manager(obj)
    return json.dumps(obj, sort_keys=False)


def check_coordinator_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL of a coordinator, got {value!r}")
    try:
        parts.port  # noqa: B018 -- raises for a port out of range
    except ValueError:
        raise ValueError(f"has a bad port: {value!r}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"must not have a query or fragment, got {value!r}")
    return value.strip().rstrip("/")


def check_instance_id(value: str) -> str:
    if not 1 <= len(value) <= 256 or any(ord(c) < 32 or ord(c) == 127 or c in "/?#%" for c in value):
        raise ValueError(f"must be 1-256 characters without control characters or / ? # %, got {value!r}")
    return value


def check_event_transport(value: str) -> str:
    if value == "kafka":
        raise ValueError("kafka is not supported by this server: cache events go to the coordinator over http")
    return one_of(("http",))(value)


L1_MANAGER_TYPES = ("DRAM", "DEVDAX")
_L1_COMMON_FIELDS = {"type", "tag", "size_gb", "align_bytes", "eviction", "read_ttl_seconds", "write_ttl_seconds"}
_L1_TYPE_FIELDS = {"DRAM": {"use_lazy", "init_size_gb", "shm_name", "use_hugepages"}, "DEVDAX": {"path"}}
_L1_EVICTION_FIELDS = {"eviction_policy", "trigger_watermark", "eviction_ratio"}
DEFAULT_L1_TAG = "_default"


@dataclass(frozen=True)
class L1ManagerSpec:
    """One `--l1-manager` object (LMCache 0.5.6's tagged L1 JSON), checked."""

    type: str
    tag: str
    size_gb: float
    path: str | None = None
    shm_name: str | None = None
    eviction: Mapping[str, Any] = field(default_factory=dict)
    read_ttl_seconds: float | None = None
    write_ttl_seconds: float | None = None


def parse_l1_manager(obj: Any) -> L1ManagerSpec:
    """Check one `--l1-manager` object as LMCache 0.5.6 does (ValueError naming the field), for
    the types this server has: DRAM (the shared-memory pool) and DEVDAX (Device-DAX arenas)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ValueError("must be a JSON object with a string \"type\"")
    kind = obj["type"]
    if kind == "GDS":
        raise ValueError("type GDS (an NVMe slab over GPUDirect Storage) is not supported by this server; use DRAM or DEVDAX")
    if kind not in L1_MANAGER_TYPES:
        raise ValueError(f"requires type DRAM, DEVDAX or GDS, got {kind!r}")
    unknown = sorted(set(obj) - _L1_COMMON_FIELDS - _L1_TYPE_FIELDS[kind])
    if unknown:
        raise ValueError(f"has unknown L1 fields for type {kind}: {unknown}")
    tag = obj.get("tag")
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError("tag must be a non-empty string")
    if tag == DEFAULT_L1_TAG and kind != "DRAM":
        raise ValueError("only DRAM can use the _default tag")
    ints = {}
    for name in ("align_bytes", "read_ttl_seconds", "write_ttl_seconds"):
        raw = obj.get(name)
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0):
            raise ValueError(f"{name} must be a positive integer, got {raw!r}")
        ints[name] = raw
    align = ints["align_bytes"]
    if align is not None and (align & (align - 1) or align > 4096):
        raise ValueError(f"align_bytes must be a power of two up to 4096 (objects here are 4096-aligned), got {align}")
    size = obj.get("size_gb")
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size) or size <= 0:
        raise ValueError(f"size_gb must be a number > 0, got {size!r}")
    eviction = obj.get("eviction", {})
    if not isinstance(eviction, dict) or set(eviction) - _L1_EVICTION_FIELDS:
        raise ValueError("eviction must contain eviction_policy, trigger_watermark and eviction_ratio only")
    policy = eviction.get("eviction_policy", EVICTION_POLICIES[0])
    if not isinstance(policy, str) or policy.lower() not in {p.lower() for p in EVICTION_POLICIES}:
        raise ValueError(f"eviction_policy must be one of {', '.join(EVICTION_POLICIES)}, got {policy!r}")
    for name in ("trigger_watermark", "eviction_ratio"):
        if name in eviction:
            value = eviction[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    path = shm_name = None
    if kind == "DEVDAX":
        path = obj.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ValueError("path must be a non-empty string")
    else:
        if obj.get("use_hugepages", False) is not False:
            raise ValueError("use_hugepages is not supported by this server (its DRAM L1 is a shared-memory segment)")
        for name in ("use_lazy",):
            if not isinstance(obj.get(name, True), bool):
                raise ValueError(f"{name} must be true or false")
        shm_name = obj.get("shm_name", "")
        if not isinstance(shm_name, str):
            raise ValueError("shm_name must be a string")
        check_shm_suffix(shm_name)
    return L1ManagerSpec(
        type=kind,
        tag=tag,
        size_gb=float(size),
        path=path,
        shm_name=shm_name or None,
        eviction=dict(eviction),
        read_ttl_seconds=ints["read_ttl_seconds"],
        write_ttl_seconds=ints["write_ttl_seconds"],
    )
