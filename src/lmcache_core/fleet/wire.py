"""The coordinator's JSON wire forms (LMCache 0.5.0 and 0.5.6), parsed into fleet types.

Parsers take the decoded JSON body and raise UnprocessableError naming the bad field; nothing
here trusts a client. `batch_to_json` is the inverse of `parse_events` (what a server sends)."""

from __future__ import annotations

import binascii
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmcache_core.errors import InvalidKeyError, UnprocessableError
from lmcache_core.fleet.model import (
    LEGACY_BACKEND,
    MAX_EXACT_INT,
    CapacityDecl,
    Entry,
    EventBatch,
    InstanceInfo,
    KeyRecord,
    Op,
    Placement,
    Tier,
)
from lmcache_core.keys import ObjectKey, validate_cache_salt, validate_model_name

MAX_TOKEN_IDS = 1_000_000
"""Token ids one request may carry (LMCache 0.5.6's cap)."""
MAX_BATCHES = 10_000
MAX_ENTRIES = 200_000
"""Entries one `POST /events` may carry in all (the body limit bounds it too)."""
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 2048
MAX_METADATA_ITEMS = 64
MAX_GROUP_ID = 2**32 - 1

_CONTROL_RE = re.compile(r"[\x00-\x1f]")
_EVENT_OPS = {"store": Op.STORE, "delete": Op.DELETE, "access": Op.ACCESS}
_LEGACY_OPS = {"store": Op.STORE, "delete": Op.DELETE, "lookup": Op.ACCESS}


# --------------------------------------------------------------------------- field checks


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise UnprocessableError(f"{where} must be a JSON object")
    return value


def _int(obj: Mapping[str, Any], name: str, default: int | None = None, *, lo: int = 0, hi: int = MAX_EXACT_INT - 1, where: str = "") -> int:
    value = obj.get(name, default)
    label = f"{where}{name}"
    if value is None:
        raise UnprocessableError(f"{label} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise UnprocessableError(f"{label} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise UnprocessableError(f"{label} must be in [{lo}, {hi}], got {value}")
    return value


def _float(obj: Mapping[str, Any], name: str, default: float, *, lo: float = 0.0, where: str = "") -> float:
    value = obj.get(name, default)
    label = f"{where}{name}"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnprocessableError(f"{label} must be a finite number")
    if value < lo:
        raise UnprocessableError(f"{label} must be >= {lo}, got {value}")
    return float(value)


def _str(obj: Mapping[str, Any], name: str, default: str | None = None, *, limit: int = MAX_TEXT_CHARS, where: str = "") -> str:
    value = obj.get(name, default)
    label = f"{where}{name}"
    if value is None:
        raise UnprocessableError(f"{label} is required")
    if not isinstance(value, str):
        raise UnprocessableError(f"{label} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise UnprocessableError(f"{label} is longer than {limit} characters")
    if _CONTROL_RE.search(value):
        raise UnprocessableError(f"{label} must not contain control characters")
    return value


def _bool(obj: Mapping[str, Any], name: str, default: bool, *, where: str = "") -> bool:
    value = obj.get(name, default)
    if not isinstance(value, bool):
        raise UnprocessableError(f"{where}{name} must be true or false")
    return value


def _list(obj: Mapping[str, Any], name: str, *, where: str = "") -> list[Any]:
    value = obj.get(name, [])
    if not isinstance(value, list):
        raise UnprocessableError(f"{where}{name} must be a list")
    return value


def _tier(obj: Mapping[str, Any], name: str, default: str | None = None, *, allow_all: bool = False, where: str = "") -> Tier | None:
    value = obj.get(name, default)
    if allow_all and value == "all":
        return None
    try:
        return Tier(value)
    except ValueError:
        allowed = "'l1', 'l2' or 'all'" if allow_all else "'l1' or 'l2'"
        raise UnprocessableError(f"{where}{name} must be {allowed}, got {value!r}") from None


def parse_tier(value: str | None, *, allow_all: bool = True, name: str = "tier") -> Tier | None:
    """A `tier` query parameter: l1, l2, or all (None) when allowed."""
    return _tier({name: value if value is not None else ("all" if allow_all else "l2")}, name, allow_all=allow_all)


def parse_key(value: Any, where: str) -> ObjectKey:
    """An EncodedObjectKey, within the fleet's limits."""
    try:
        key = ObjectKey.from_json(value)
    except InvalidKeyError as exc:
        raise UnprocessableError(f"{where}: {exc}") from None
    if key.object_group_id > MAX_GROUP_ID:
        raise UnprocessableError(f"{where}: object_group_id must be < 2**32")
    if len(key.chunk_hash) > 64:
        raise UnprocessableError(f"{where}: chunk_hash_hex is longer than 64 bytes")
    return key


def instance_id_field(value: Any, label: str = "instance_id") -> str:
    """An instance id: 1-256 printable characters."""
    text = _str({label: value}, label, limit=MAX_ID_CHARS).strip()
    if not text:
        raise UnprocessableError(f"{label} must not be empty")
    return text


# --------------------------------------------------------------------------- membership


def parse_register(body: Any, *, now: float) -> InstanceInfo:
    """`POST /instances`: an empty instance_id gets a generated one (returned to the caller)."""
    obj = _obj(body, "body")
    raw_id = _str(obj, "instance_id", "", limit=MAX_ID_CHARS).strip()
    ip = _str(obj, "ip", limit=MAX_ID_CHARS).strip()
    if not ip:
        raise UnprocessableError("ip must not be empty")
    metadata = obj.get("metadata", {})
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_ITEMS:
        raise UnprocessableError(f"metadata must be an object of at most {MAX_METADATA_ITEMS} string values")
    for k, v in metadata.items():
        if not isinstance(v, str) or len(k) > MAX_ID_CHARS or len(v) > MAX_TEXT_CHARS:
            raise UnprocessableError("metadata values must be strings (keys up to 256, values up to 2048 characters)")
    return InstanceInfo(
        instance_id=raw_id or f"mp-{uuid.uuid4().hex}",
        ip=ip,
        http_port=_int(obj, "http_port", lo=1, hi=65535),
        metadata=dict(metadata),
        p2p_advertised_url=_str(obj, "p2p_advertised_url", "").strip(),
        mq_port=_int(obj, "mq_port", 0, lo=0, hi=65535),
        registration_time=now,
    )


def instance_to_json(info: InstanceInfo) -> dict[str, Any]:
    return {
        "instance_id": info.instance_id,
        "ip": info.ip,
        "http_port": info.http_port,
        "registration_time": info.registration_time,
        "metadata": dict(info.metadata),
        "p2p_advertised_url": info.p2p_advertised_url,
        "mq_port": info.mq_port,
    }


def instance_from_json(obj: Mapping[str, Any]) -> InstanceInfo:
    """The stored form of `instance_to_json` (trusted: written by a coordinator)."""
    return InstanceInfo(
        instance_id=str(obj["instance_id"]),
        ip=str(obj["ip"]),
        http_port=int(obj["http_port"]),
        metadata=dict(obj.get("metadata") or {}),
        p2p_advertised_url=str(obj.get("p2p_advertised_url", "")),
        mq_port=int(obj.get("mq_port", 0)),
        registration_time=float(obj.get("registration_time", 0.0)),
    )


# --------------------------------------------------------------------------- events


def parse_events(body: Any) -> list[EventBatch]:
    """`POST /events` (LMCache 0.5.6): `{"batches": [CacheEventBatch...]}`."""
    obj = _obj(body, "body")
    raw_batches = _list(obj, "batches")
    if len(raw_batches) > MAX_BATCHES:
        raise UnprocessableError(f"batches: at most {MAX_BATCHES} per request")
    total = 0
    out = []
    for i, raw in enumerate(raw_batches):
        batch = _parse_batch(_obj(raw, f"batches[{i}]"), f"batches[{i}].")
        total += len(batch.entries)
        if total > MAX_ENTRIES:
            raise UnprocessableError(f"at most {MAX_ENTRIES} entries per request; send smaller flushes")
        out.append(batch)
    return out


def _parse_batch(obj: Mapping[str, Any], where: str) -> EventBatch:
    instance_id = instance_id_field(obj.get("instance_id"), f"{where}instance_id")
    incarnation = _int(obj, "incarnation", where=where)
    seq = _int(obj, "seq", lo=1, where=where)
    event_type = obj.get("event_type")
    tier = _tier(obj, "tier", where=where)
    assert tier is not None
    backend = _str(obj, "backend", "", limit=MAX_ID_CHARS, where=where)
    shared = _bool(obj, "shared", False, where=where)
    ts = _float(obj, "ts", 0.0, where=where)
    raw_entries = _list(obj, "entries", where=where)
    if event_type == "config":
        if raw_entries:
            raise UnprocessableError(f"{where}entries: config batches declare capacity and carry no entries")
        if not backend:
            raise UnprocessableError(f"{where}backend must be non-empty for config batches")
        decl = CapacityDecl(
            tier, backend, shared, _int(obj, "capacity_bytes", 0, where=where), _int(obj, "capacity_revision", 0, where=where)
        )
        return EventBatch(instance_id, incarnation, seq, tier, backend, shared, (), ts, capacity=decl)
    op = _EVENT_OPS.get(event_type) if isinstance(event_type, str) else None
    if op is None:
        raise UnprocessableError(f"{where}event_type must be 'store', 'delete', 'access' or 'config', got {event_type!r}")
    if not backend and op is not Op.ACCESS:
        raise UnprocessableError(f"{where}backend must be non-empty for {op.value} batches")
    entries = []
    for j, raw in enumerate(raw_entries):
        e = _obj(raw, f"{where}entries[{j}]")
        key = parse_key(e.get("key"), f"{where}entries[{j}].key")
        size = _int(e, "size_bytes", 0, where=f"{where}entries[{j}].") if op is Op.STORE else 0
        entries.append(Entry(op, key, size))
    return EventBatch(instance_id, incarnation, seq, tier, backend, shared, tuple(entries), ts)


def parse_legacy_events(body: Any) -> tuple[str, int, list[Entry]]:
    """`POST /l2/events` (LMCache 0.5.0): `{"instance_id", "seq", "events": [{type, key, bytes}]}`."""
    obj = _obj(body, "body")
    instance_id = instance_id_field(obj.get("instance_id"))
    seq = _int(obj, "seq", lo=1)
    raw_events = _list(obj, "events")
    if len(raw_events) > MAX_ENTRIES:
        raise UnprocessableError(f"events: at most {MAX_ENTRIES} per request")
    entries = []
    for i, raw in enumerate(raw_events):
        e = _obj(raw, f"events[{i}]")
        kind = e.get("type")
        op = _LEGACY_OPS.get(kind) if isinstance(kind, str) else None
        if op is None:
            raise UnprocessableError(f"events[{i}].type must be 'store', 'lookup' or 'delete', got {kind!r}")
        key = parse_key(e.get("key"), f"events[{i}].key")
        size = _int(e, "bytes", 0, where=f"events[{i}].")
        entries.append(Entry(op, key, size if op is Op.STORE else 0))
    return instance_id, seq, entries


def legacy_batch(instance_id: str, epoch: int, seq: int, entries: Sequence[Entry]) -> EventBatch:
    """A 0.5.0 report as a batch: the registration epoch is its incarnation, and its L2 is the
    one fleet-shared pool 0.5.0 assumes."""
    return EventBatch(instance_id, epoch, seq, Tier.L2, LEGACY_BACKEND, True, tuple(entries), legacy=True)


def batch_to_json(batch: EventBatch) -> dict[str, Any]:
    """The 0.5.6 wire form of a batch whose entries share one operation (what `parse_events`
    reads back); ValueError for a mixed batch."""
    head: dict[str, Any] = {
        "instance_id": batch.instance_id,
        "incarnation": batch.incarnation,
        "seq": batch.seq,
        "tier": batch.tier.value,
        "backend": batch.backend,
        "shared": batch.shared,
        "ts": batch.ts,
    }
    if batch.capacity is not None:
        return {
            **head,
            "event_type": "config",
            "entries": [],
            "capacity_bytes": batch.capacity.capacity_bytes,
            "capacity_revision": batch.capacity.revision,
        }
    ops = {entry.op for entry in batch.entries}
    if len(ops) > 1:
        raise ValueError("a wire batch carries one operation")
    op = ops.pop() if ops else Op.ACCESS
    entries: list[dict[str, Any]] = []
    for entry in batch.entries:
        item: dict[str, Any] = {"key": entry.key.to_json()}
        if op is Op.STORE:
            item["size_bytes"] = entry.size_bytes
        entries.append(item)
    return {**head, "event_type": op.value, "entries": entries}


def placement_to_json(p: Placement) -> dict[str, Any]:
    return {
        "instance_id": p.instance_id,
        "incarnation": p.incarnation,
        "tier": p.tier.value,
        "backend": p.backend,
        "size_bytes": p.size_bytes,
        "shared": p.shared,
    }


def record_placements(record: KeyRecord | None) -> list[dict[str, Any]]:
    """A record's placements as 0.5.6 lists them: sorted by (instance, tier, backend)."""
    if record is None:
        return []
    ordered = sorted(record.placements, key=lambda p: (p.instance_id, p.tier.value, p.backend))
    return [placement_to_json(p) for p in ordered]


# --------------------------------------------------------------------------- token requests


@dataclass(frozen=True)
class TokenQuery:
    """A prompt named by tokens (or by its chunk hashes) under a model, world size and salt."""

    model_name: str
    world_size: int
    cache_salt: str
    token_ids: np.ndarray[Any, np.dtype[np.uint32]] | None = None
    chunk_hashes: tuple[bytes, ...] | None = None


def parse_token_query(obj: Mapping[str, Any], *, hashes_allowed: bool = False, require_model: bool = True) -> TokenQuery:
    """`model_name`, `world_size` (>= 1), `cache_salt` and the prompt: `token_ids` (ints in
    uint32), or `tokens_b64` (base64 of little-endian uint32), or, when allowed, `chunk_hashes`
    (hex strings of the chain, first chunk first)."""
    model_name = _str(obj, "model_name", "" if not require_model else None, limit=MAX_TEXT_CHARS)
    try:
        if model_name or require_model:
            validate_model_name(model_name)
        cache_salt = validate_cache_salt(_str(obj, "cache_salt", ""))
    except InvalidKeyError as exc:
        raise UnprocessableError(str(exc)) from None
    world_size = _int(obj, "world_size", 1, lo=1, hi=255)
    forms = [name for name in ("token_ids", "tokens_b64", "chunk_hashes") if obj.get(name) not in (None, [], "")]
    if len(forms) > 1:
        raise UnprocessableError(f"give one of token_ids, tokens_b64{', chunk_hashes' if hashes_allowed else ''}, not {' and '.join(forms)}")
    form = forms[0] if forms else "token_ids"
    if form == "chunk_hashes":
        if not hashes_allowed:
            raise UnprocessableError("chunk_hashes is not accepted here; give token_ids")
        raw = _list(obj, "chunk_hashes")
        hashes = []
        for i, h in enumerate(raw):
            if not isinstance(h, str) or not h or len(h) % 2 or len(h) > 128:
                raise UnprocessableError(f"chunk_hashes[{i}] must be an even-length hex string")
            try:
                hashes.append(bytes.fromhex(h))
            except ValueError:
                raise UnprocessableError(f"chunk_hashes[{i}] is not hex") from None
        return TokenQuery(model_name, world_size, cache_salt, chunk_hashes=tuple(hashes))
    if form == "tokens_b64":
        text = obj.get("tokens_b64")
        if not isinstance(text, str):
            raise UnprocessableError("tokens_b64 must be a string")
        try:
            raw_bytes = binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError):
            raise UnprocessableError("tokens_b64 is not valid base64") from None
        if len(raw_bytes) % 4:
            raise UnprocessableError("tokens_b64 must decode to a whole number of uint32 tokens")
        tokens = np.frombuffer(raw_bytes, dtype="<u4").astype(np.uint32)
    else:
        tokens = token_array(obj.get("token_ids", []))
    if len(tokens) > MAX_TOKEN_IDS:
        raise UnprocessableError(f"too many token_ids in a single request (limit={MAX_TOKEN_IDS}, got={len(tokens)})")
    return TokenQuery(model_name, world_size, cache_salt, token_ids=tokens)


def token_array(value: Any) -> np.ndarray[Any, np.dtype[np.uint32]]:
    """JSON token ids as a uint32 array; UnprocessableError for anything but ints in range."""
    if not isinstance(value, list):
        raise UnprocessableError("token_ids must be a list of integers")
    if not value:
        return np.empty(0, dtype=np.uint32)
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError):
        raise UnprocessableError("token_ids must be a list of integers") from None
    if arr.dtype.kind not in "iu" or arr.ndim != 1:
        raise UnprocessableError("token_ids must be a list of integers")
    if len(arr) > MAX_TOKEN_IDS:
        raise UnprocessableError(f"too many token_ids in a single request (limit={MAX_TOKEN_IDS}, got={len(arr)})")
    if arr.min() < 0 or arr.max() > 0xFFFFFFFF:
        raise UnprocessableError("token_ids must be in [0, 2**32)")
    return arr.astype(np.uint32)


def parse_keys_list(obj: Mapping[str, Any], name: str = "keys", *, limit: int = 100_000) -> list[ObjectKey]:
    raw = _list(obj, name)
    if len(raw) > limit:
        raise UnprocessableError(f"{name}: at most {limit} keys per request")
    return [parse_key(item, f"{name}[{i}]") for i, item in enumerate(raw)]


def parse_limit_gb(obj: Mapping[str, Any], name: str, *, optional: bool = False) -> float | None:
    value = obj.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnprocessableError(f"{name} must be a number" + (" or null" if optional else ""))
    if value < 0:
        raise UnprocessableError(f"{name} must be greater than or equal to 0")
    if value > 1 << 30:
        raise UnprocessableError(f"{name} must be at most {1 << 30} GiB")
    return float(value)


def body_tier(obj: Mapping[str, Any], default: str = "l2", *, allow_all: bool = False) -> Tier | None:
    return _tier(obj, "tier", default, allow_all=allow_all)


def body_bool(obj: Mapping[str, Any], name: str, default: bool = False) -> bool:
    return _bool(obj, name, default)


def body_str(obj: Mapping[str, Any], name: str, default: str | None = None) -> str:
    return _str(obj, name, default)


def body_int(obj: Mapping[str, Any], name: str, default: int | None = None, *, lo: int = 0, hi: int = MAX_EXACT_INT - 1) -> int:
    return _int(obj, name, default, lo=lo, hi=hi)


def body_float(obj: Mapping[str, Any], name: str, default: float, *, lo: float = 0.0) -> float:
    return _float(obj, name, default, lo=lo)


def body_object(value: Any) -> Mapping[str, Any]:
    return _obj(value, "body")
