"""The `dax` L2 adapter: fixed-size slots in mmap'ed Device-DAX devices (or regular files), reconfigurable at run time."""

from __future__ import annotations

import heapq
import logging
import mmap
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import xxhash

from lmcache_adapters.l2.instruments import L2Instruments
from lmcache_adapters.l2.integrity import (
    HEADER_SIZE,
    IntegrityError,
    decode_header,
    encode_header,
    verify,
)
from lmcache_adapters.l2.listing import check_page_args, page_of
from lmcache_adapters.l2.stack import BackendL2Adapter, StackContext
from lmcache_adapters.memory.devices import (
    DEFAULT_DAX_ALIGN,
    dax_geometry,
    device_identity,
    extend_file,
    inspect_device,
    map_device,
    open_device,
    unmap_device,
)
from lmcache_core.errors import (
    BackendUnavailableError,
    ConfigError,
    ConflictError,
    ForbiddenOperationError,
    InvalidKeyError,
    InvalidValueError,
    NotFoundError,
    NotInitializedError,
)
from lmcache_core.keys import ObjectKey
from lmcache_core.plugin.registry import COMMON_FIELDS, ConfigField, config_field
from lmcache_core.ports import KeyLockView, KeyPage, L2Usage, MetricsSink

__all__ = [
    "DAX_FIELDS",
    "DEVICE_STATES",
    "DaxBackend",
    "DaxDeviceConfig",
    "DaxL2Adapter",
    "InvalidSizeError",
    "UnsupportedOperationError",
    "create_dax_adapter",
    "parse_size",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- on-device layout
#
# offset 0:               superblock (SUPERBLOCK_BYTES): magic, version, slot_bytes, record size
# offset SUPERBLOCK_BYTES: slot 0, slot 1, ... each `slot_bytes` long:
#     [slot record (RECORD_BYTES): magic, name length, sequence, payload length, checksum, key name]
#     [integrity header (HEADER_SIZE)] [payload]
# The record is the slot directory entry: written last on store, cleared first on free, so a
# crash mid-write leaves a free slot, never a torn object that looks valid.

SUPERBLOCK_BYTES = 4096
RECORD_BYTES = 512
_SUPER = struct.Struct(">8sIIQ")  # magic, version, record bytes, slot bytes
_SUPER_MAGIC = b"LMCDAX\x00\x01"
_SUPER_VERSION = 1
_RECORD = struct.Struct(">4sHHQQ")  # magic, version, name length, sequence, payload length
_RECORD_MAGIC = b"LMCS"
_RECORD_VERSION = 1
_RECORD_FIXED = _RECORD.size + 8  # + xxh3-64 over the fixed fields and the name
MAX_NAME_BYTES = RECORD_BYTES - _RECORD_FIXED
SLOT_OVERHEAD = RECORD_BYTES + HEADER_SIZE
MIN_SLOT_BYTES = 4096

ACTIVE, DRAINING, MIGRATING, RESIZING, REMOVING, FAILED, REMOVED = (
    "active",
    "draining",
    "migrating",
    "resizing",
    "removing",
    "failed",
    "removed",
)
DEVICE_STATES = (ACTIVE, DRAINING, MIGRATING, RESIZING, REMOVING, FAILED, REMOVED)
_READABLE = frozenset({ACTIVE, DRAINING, MIGRATING, RESIZING})
_IN_CAPACITY = frozenset({ACTIVE, DRAINING, MIGRATING, RESIZING, REMOVING})

SUPPORTED_OPERATIONS = ("status", "add", "remove", "resize")
REMOVE_MODES = ("migrate", "evict", "drain")
RESIZE_MODES = ("migrate", "evict")
PLACEMENTS = ("most_free", "round_robin")
MAX_WORKERS_LIMIT = 256
DEFAULT_RECONFIGURE_TIMEOUT_S = 30.0


class InvalidSizeError(InvalidValueError):
    """A size value is not a positive byte count or a string like "100GiB" (HTTP 400, as the reference)."""


class UnsupportedOperationError(InvalidValueError):
    """A reconfiguration operation this adapter does not know (HTTP 400, as the reference)."""


# ---------------------------------------------------------------------- sizes

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}


def parse_size(value: Any, field_name: str = "size") -> int:
    """A positive byte count from an int or a string with a base-1024 unit ("100GiB", "512MiB",
    "1G", "4096"); raise InvalidSizeError naming `field_name` otherwise."""
    if isinstance(value, bool):
        raise InvalidSizeError(f"{field_name} must be a positive integer byte count or a string like '100GiB', got {value!r}")
    if isinstance(value, int):
        resolved = value
    elif isinstance(value, str) and len(value) <= 64:
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise InvalidSizeError(
                f"{field_name} must be a positive integer byte count or a string like '100GiB', got {value!r}"
            )
        try:
            resolved = int(Decimal(match.group(1)) * _SIZE_UNITS[unit])
        except InvalidOperation:  # pragma: no cover - the regex admits only decimal numbers
            raise InvalidSizeError(f"{field_name} is not a number: {value!r}") from None
    else:
        raise InvalidSizeError(f"{field_name} must be a positive integer byte count or a string like '100GiB', got {value!r}")
    if resolved <= 0:
        raise InvalidSizeError(f"{field_name} must be positive, got {value!r}")
    return resolved


# ---------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class DaxDeviceConfig:
    """One configured device: a Device-DAX character device or a regular file standing in for one.

    `size` is the number of bytes mapped; None means the whole Device-DAX device (required for files)."""

    path: str
    size: int | None = None


def _device_configs(raw: Any) -> list[DaxDeviceConfig]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("devices must be a non-empty list of {\"path\": ..., \"size\": ...} objects")
    out: list[DaxDeviceConfig] = []
    for i, item in enumerate(raw):
        if isinstance(item, DaxDeviceConfig):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise ConfigError(f"devices[{i}] must be an object with path and size")
        path = _body_path(item, f"devices[{i}]", {"path", "device_path", "size"})
        size = item.get("size")
        out.append(DaxDeviceConfig(path, None if size is None else parse_size(size, f"devices[{i}].size")))
    return out


def _body_path(body: Mapping[str, Any], where: str, allowed: set[str]) -> str:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ConfigError(f"unknown field(s) in {where}: {', '.join(unknown)} (accepted: {', '.join(sorted(allowed))})")
    if "path" in body and "device_path" in body:
        raise ConfigError(f"{where}: give device_path or path, not both")
    name = "device_path" if "device_path" in body else "path"
    value = body.get(name)
    if value is None:
        raise ConfigError(f"{where} requires field 'device_path'")
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ConfigError(f"{where}: {name} must be a non-empty path string")
    return os.path.abspath(value.strip())


# ---------------------------------------------------------------------- devices


@dataclass(slots=True)
class _Loc:
    """Where one key lives."""

    device: _Device
    slot: int
    length: int
    seq: int


@dataclass(eq=False)
class _Device:
    """One mapped device and its slot bookkeeping (guarded by the adapter's lock)."""

    path: str
    size: int
    is_dax: bool
    align: int
    fd: int
    mm: mmap.mmap | None
    identity: tuple[int, int, int]
    slots_total: int
    slot_bytes: int
    state: str = ACTIVE
    owner: list[ObjectKey | None] = field(default_factory=list)
    free: list[int] = field(default_factory=list)  # min-heap: low slots first keeps the tail free for shrinking
    used: int = 0
    writing: set[int] = field(default_factory=set)
    readers: dict[int, int] = field(default_factory=dict)
    pending_free: set[int] = field(default_factory=set)
    io: int = 0
    exclusive: bool = False
    error: str | None = None

    def slot_offset(self, slot: int) -> int:
        return SUPERBLOCK_BYTES + slot * self.slot_bytes


def _encode_record(name: bytes, seq: int, length: int) -> bytes:
    fixed = _RECORD.pack(_RECORD_MAGIC, _RECORD_VERSION, len(name), seq, length)
    return fixed + struct.pack(">Q", xxhash.xxh3_64_intdigest(fixed + name)) + name


def _decode_record(raw: bytes) -> tuple[str, int, int] | None:
    """(storage name, seq, payload length) of a valid record, else None."""
    if raw[:4] != _RECORD_MAGIC:
        return None
    magic, version, name_len, seq, length = _RECORD.unpack_from(raw, 0)
    if version != _RECORD_VERSION or name_len > MAX_NAME_BYTES:
        return None
    (digest,) = struct.unpack_from(">Q", raw, _RECORD.size)
    name = raw[_RECORD_FIXED : _RECORD_FIXED + name_len]
    if xxhash.xxh3_64_intdigest(raw[: _RECORD.size] + name) != digest:
        return None
    try:
        return name.decode("utf-8"), seq, length
    except UnicodeDecodeError:
        return None


@contextmanager
def _random_access(mm: mmap.mmap) -> Iterator[None]:
    # A scan touches one page per slot: readahead would read (or zero-fill) far more than that.
    try:
        mm.madvise(mmap.MADV_RANDOM)
    except (OSError, AttributeError):
        pass
    try:
        yield
    finally:
        try:
            mm.madvise(mmap.MADV_NORMAL)
        except (OSError, AttributeError, ValueError):
            pass


def _byte_view(buf: Any) -> memoryview:
    view = memoryview(buf)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")  # raises TypeError when not contiguous
    return view


def _copy(dst: memoryview, src: memoryview) -> None:
    # numpy releases the GIL for large copies, so loads on several workers overlap.
    if not src.nbytes:
        return
    np.copyto(np.frombuffer(dst, dtype=np.uint8), np.frombuffer(src, dtype=np.uint8))


# ---------------------------------------------------------------------- the adapter


class _NoLocks:
    """The lock view of a backend used without the standard stack: nothing is ever locked."""

    def is_locked(self, key: ObjectKey) -> bool:
        return False

    def locked_keys(self) -> list[ObjectKey]:
        return []

    def discard(self, keys: Sequence[ObjectKey]) -> None:
        return None


class DaxBackend:
    """Fixed-size slots across one or more mmap'ed devices, with add / remove / resize at run time.

    Every slot holds `record || integrity header || payload`; an object larger than
    `slot_bytes - SLOT_OVERHEAD` fails for its key. The slot records are the persistent directory:
    a new adapter over the same devices rebuilds its index from them (headers checked; payload
    checksums are verified on load, where a mismatch is a miss that frees the slot)."""

    kind = "dax"

    def __init__(
        self,
        devices: Sequence[DaxDeviceConfig | Mapping[str, Any]],
        slot_bytes: int,
        *,
        placement: str = "most_free",
        preallocate: bool = True,
        name: str = "dax",
        instruments: L2Instruments | None = None,
        reconfigure_timeout_s: float = DEFAULT_RECONFIGURE_TIMEOUT_S,
    ) -> None:
        configs = _device_configs(list(devices))
        slot_bytes = parse_size(slot_bytes, "slot_bytes")
        if slot_bytes < MIN_SLOT_BYTES:
            raise ConfigError(f"slot_bytes must be at least {MIN_SLOT_BYTES}, got {slot_bytes}")
        if placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        if not isinstance(preallocate, bool):
            raise ConfigError(f"preallocate must be a boolean, got {preallocate!r}")
        self.name = name
        self.slot_bytes = slot_bytes
        self.max_payload_bytes = slot_bytes - SLOT_OVERHEAD
        self.placement = placement
        self.preallocate = preallocate
        self.reconfigure_timeout_s = reconfigure_timeout_s
        self._instruments = instruments or L2Instruments(None, adapter=name, kind=self.kind)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._devices: list[_Device] = []
        self._index: dict[ObjectKey, _Loc] = {}
        self._key_locks: KeyLockView = _NoLocks()
        self._bytes_by_salt: dict[str, int] = {}
        self._seq = 0
        self._rr = 0
        self._checksum_failures = 0
        self._sorted_names: list[str] | None = None
        self._name_to_key: dict[str, ObjectKey] = {}
        self._closed = False
        seen: set[tuple[int, int, int]] = set()
        try:
            for i, cfg in enumerate(configs):
                dev = self._open_device(cfg.path, cfg.size, where=f"devices[{i}]")
                if dev.identity in seen:
                    self._close_device(dev)
                    raise ConfigError(f"devices[{i}].path {cfg.path!r} is configured twice")
                seen.add(dev.identity)
                with self._lock:
                    self._devices.append(dev)
                    self._rebuild_locked(dev)
        except BaseException:
            for dev in self._devices:
                self._close_device(dev)
            raise

    # ------------------------------------------------------------------ StorageBackend

    def attach_key_locks(self, locks: KeyLockView) -> None:
        """SeesKeyLocks: locked objects block a removal or shrink without `force`."""
        self._key_locks = locks

    def exists(self, key: ObjectKey) -> bool:
        with self._lock:
            loc = self._index.get(key)
            return loc is not None and loc.device.state in _READABLE

    def delete(self, key: ObjectKey) -> bool:
        """Remove `key`; a draining device that becomes empty is removed."""
        with self._lock:
            loc = self._index.get(key)
            if loc is None:
                return False
            self._drop_locked(key)
            self._maybe_finish_drain_locked(loc.device)
            return True

    def list_keys(
        self,
        page_size: int,
        page_token: str | None = None,
        *,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> KeyPage:
        """Keys in storage-name order; the page token is the last listed key's storage name.

        Raises ValueError for a page_size < 1 or a page token that is not a storage name."""
        check_page_args(page_size, page_token)
        with self._lock:
            if self._sorted_names is None:
                self._name_to_key = {key.to_storage_name(): key for key in self._index}
                self._sorted_names = sorted(self._name_to_key)
            names, name_to_key = self._sorted_names, self._name_to_key
        return page_of(names, name_to_key.__getitem__, page_size, page_token, model_name=model_name, cache_salt=cache_salt)

    def usage(self) -> L2Usage:
        """Bytes in occupied slots (whole slots: what is really unavailable), capacity of the
        devices still holding data, and bytes per cache_salt."""
        with self._lock:
            used = len(self._index) * self.slot_bytes
            capacity = sum(d.slots_total for d in self._devices if d.state in _IN_CAPACITY) * self.slot_bytes
            return L2Usage(used_bytes=used, capacity_bytes=capacity, bytes_by_salt=dict(self._bytes_by_salt))

    def probe(self) -> None:
        """Readiness: at least one device is active and each active device's path still names
        the device that is mapped (not removed or replaced since)."""
        with self._lock:
            active = [(d.path, d.identity) for d in self._devices if d.state == ACTIVE]
            failed = [d.path for d in self._devices if d.state == FAILED]
        if failed:
            raise BackendUnavailableError(f"failed device(s): {', '.join(failed)}")
        if not active:
            raise BackendUnavailableError("no active device")
        for path, identity in active:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise BackendUnavailableError(f"device {path}: {exc.strerror or exc}") from exc
            if device_identity(st) != identity:
                raise BackendUnavailableError(f"device {path} was replaced by another file since it was mapped")

    def report_status(self) -> dict[str, Any]:
        """Health, devices with their states and slot counts, bytes and integrity counters."""
        with self._lock:
            devices = [self._device_report_locked(d) for d in self._devices]
            failed = [d.path for d in self._devices if d.state == FAILED]
            healthy = not self._closed and not failed and any(d.state == ACTIVE for d in self._devices)
            report: dict[str, Any] = {
                "is_healthy": healthy,
                "type": type(self).__name__,
                "kind": self.kind,
                "name": self.name,
                "placement": self.placement,
                "devices": devices,
                "slot_bytes": self.slot_bytes,
                "max_object_bytes": self.max_payload_bytes,
                "stored_object_count": len(self._index),
                "used_bytes": len(self._index) * self.slot_bytes,
                "capacity_bytes": sum(d.slots_total for d in self._devices if d.state in _IN_CAPACITY)
                * self.slot_bytes,
                "checksum_failures": self._checksum_failures,
            }
            if failed:
                report["error"] = f"failed device(s): {', '.join(failed)}"
            return report

    def close(self) -> None:
        """Finish queued operations, flush and unmap every device. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with self._lock:
            for dev in self._devices:
                if dev.mm is not None:
                    self._wait_idle_locked(dev, self.reconfigure_timeout_s)
                self._close_device(dev)
            self._index.clear()

    def __repr__(self) -> str:
        return f"DaxBackend(name={self.name!r}, devices={[d.path for d in self._devices]}, slot_bytes={self.slot_bytes})"

    def owns_device(self, device_path: str) -> bool:
        """Whether a device of this adapter (not removed) is the file or device at `device_path`."""
        try:
            identity = device_identity(os.stat(device_path))
        except (OSError, ValueError, TypeError):
            return False
        with self._lock:
            return any(d.state != REMOVED and d.identity == identity for d in self._devices)

    # ------------------------------------------------------------------ runtime reconfiguration

    def reconfigure_status(self) -> dict[str, Any]:
        """`{"backend": "dax", "supported_operations": [...], "status": {...}}` for
        `GET /reconfigure/dax/status` (the HTTP layer adds the backend-local adapter_index)."""
        with self._lock:
            devices = [
                {"index": i, **self._device_reconfigure_locked(d)} for i, d in enumerate(self._devices)
            ]
            in_capacity = [d for d in self._devices if d.state in _IN_CAPACITY]
            return {
                "backend": "dax",
                "supported_operations": list(SUPPORTED_OPERATIONS),
                "status": {
                    "slot_bytes": self.slot_bytes,
                    "placement": self.placement,
                    "total_capacity_bytes": sum(d.slots_total for d in in_capacity) * self.slot_bytes,
                    "total_used_bytes": len(self._index) * self.slot_bytes,
                    "num_devices": len(devices),
                    "devices": devices,
                },
            }

    def apply_reconfiguration(self, operation: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        """Apply one operation of `POST /reconfigure/dax/<operation>` and return its result.

        Bodies (extra fields rejected; `path` is accepted as an alias of `device_path`;
        `adapter_index` is accepted and ignored, the HTTP layer resolves it):
        - add: {device_path, size}
        - remove: {device_path, mode: migrate|evict|drain = migrate, force: bool = false}
        - resize: {device_path, size, mode: migrate|evict = migrate, force: bool = false}

        Raises ConfigError for a bad body (InvalidSizeError / UnsupportedOperationError for the
        reference's 400 cases), NotFoundError for an unknown device, ConflictError when the
        device's state or contents forbid it now, ForbiddenOperationError for removing the last
        active device."""
        if not isinstance(operation, str) or not operation.strip():
            raise UnsupportedOperationError("operation must be a non-empty string")
        op = operation.strip().lower()
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise ConfigError("request body must be a JSON object")
        if op == "status":
            _only_fields(body, {"adapter_index"}, "status")
            return self.reconfigure_status()
        if op == "add":
            fields = {"device_path", "path", "size", "adapter_index"}
            path = _body_path(_without(body, "adapter_index"), "add body", fields - {"adapter_index"})
            if "size" not in body:
                raise ConfigError("add body requires field 'size'")
            return self.add_device(path, parse_size(body["size"], "size"))
        if op == "remove":
            fields = {"device_path", "path", "mode", "force"}
            sub = _without(body, "adapter_index")
            path = _body_path(sub, "remove body", fields)
            mode = _choice(sub.get("mode", "migrate"), REMOVE_MODES, "mode")
            return self.remove_device(path, mode=mode, force=_flag(sub.get("force", False), "force"))
        if op == "resize":
            fields = {"device_path", "path", "size", "mode", "force"}
            sub = _without(body, "adapter_index")
            path = _body_path(sub, "resize body", fields)
            if "size" not in sub:
                raise ConfigError("resize body requires field 'size'")
            size = parse_size(sub["size"], "size")
            mode = _choice(sub.get("mode", "migrate"), RESIZE_MODES, "mode")
            return self.resize_device(path, size, mode=mode, force=_flag(sub.get("force", False), "force"))
        raise UnsupportedOperationError(
            f"unsupported dax reconfigure operation {op!r} (supported: {', '.join(SUPPORTED_OPERATIONS)})"
        )

    def add_device(self, path: str, size: int | None) -> dict[str, Any]:
        """Map one more device and make it active; objects already on it (from an earlier life)
        are adopted. A path (or the same file/device under another path) already configured is a
        ConflictError."""
        self._check_open()
        path = os.path.abspath(path)
        with self._lock:
            for dev in self._devices:
                if dev.state != REMOVED and dev.path == path:
                    raise ConflictError(f"device {path!r} is already configured (state {dev.state})")
        dev = self._open_device(path, size, where="add body")
        with self._lock:
            clash = next((d for d in self._devices if d.state != REMOVED and d.identity == dev.identity), None)
            if clash is not None:
                self._close_device(dev)
                raise ConflictError(f"device {path!r} is the same device as configured {clash.path!r}")
            if self._closed:
                self._close_device(dev)
                raise NotInitializedError(f"L2 adapter {self.name!r} (dax) is closed")
            # a removed entry for the same path is history the new one replaces
            self._devices = [d for d in self._devices if not (d.state == REMOVED and d.path == path)]
            self._devices.append(dev)
            recovered = self._rebuild_locked(dev)
            self._cond.notify_all()
            log.info("dax: added device %s (%d bytes, %d slots, %d objects adopted)", path, dev.size, dev.slots_total, recovered)
            return {
                "status": "ok",
                "operation": "add",
                "device": {"index": self._devices.index(dev), **self._device_reconfigure_locked(dev)},
                "recovered_keys": recovered,
            }

    def remove_device(self, path: str, *, mode: str = "migrate", force: bool = False) -> dict[str, Any]:
        """Take a device out of service.

        - migrate: copy its objects to other active devices, then unmap it (no room left:
          ConflictError, or with `force` the rest is dropped);
        - evict: drop its objects, then unmap it;
        - drain: stop new writes; it is removed once empty (or at once with `force`).
        Locked objects block migrate/evict without `force` (ConflictError); removing the last
        active device is refused (ForbiddenOperationError)."""
        self._check_open()
        if mode not in REMOVE_MODES:
            raise ConfigError(f"mode must be one of {', '.join(REMOVE_MODES)}, got {mode!r}")
        with self._lock:
            dev = self._find_locked(path)
            index = self._devices.index(dev)
            if dev.state in (MIGRATING, RESIZING, REMOVING):
                raise ConflictError(f"device {dev.path!r} is busy ({dev.state}); retry when it is done")
            if dev.state != FAILED and not any(d is not dev and d.state == ACTIVE for d in self._devices):
                raise ForbiddenOperationError(
                    f"cannot remove {dev.path!r}: it is the last active device of this adapter "
                    "(add another device first)"
                )
            if dev.state == FAILED:
                mode = "evict"  # nothing on a failed device can be read back
            locked = self._locked_count_locked(dev)
            if mode == "drain" and not force:
                if dev.state == ACTIVE:
                    dev.state = DRAINING
                    log.info("dax: draining device %s (%d objects)", dev.path, dev.used)
                self._maybe_finish_drain_locked(dev)
                return {
                    "status": "ok",
                    "operation": "drain",
                    "device_path": dev.path,
                    "index": index,
                    "state": dev.state,
                    "remaining_keys": dev.used,
                }
            if locked and not force:
                raise ConflictError(
                    f"device {dev.path!r} holds {locked} locked object(s); retry later or pass force=true"
                )
            previous = dev.state
            dev.state = MIGRATING if mode == "migrate" else REMOVING
            self._cond.notify_all()
        moved = moved_bytes = 0
        try:
            if mode == "migrate":
                moved, moved_bytes = self._migrate_all(dev, force=force)
            with self._lock:
                dev.state = REMOVING
                deleted = self._evict_all_locked(dev)
                self._finish_removal_locked(dev)
        except BaseException:
            with self._lock:
                if dev.state in (MIGRATING, REMOVING):
                    dev.state = previous
                    self._cond.notify_all()
            raise
        log.info("dax: removed device %s (mode %s: %d moved, %d dropped)", dev.path, mode, moved, deleted)
        return {
            "status": "ok",
            "operation": "remove",
            "mode": mode,
            "device_path": dev.path,
            "index": index,
            "moved_keys": moved,
            "moved_bytes": moved_bytes,
            "deleted_keys": deleted,
            "source_slots_freed": moved + deleted,
            "state": dev.state,
        }

    def resize_device(self, path: str, size: int, *, mode: str = "migrate", force: bool = False) -> dict[str, Any]:
        """Grow or shrink a device's mapped size.

        Growing adds free slots. Shrinking drops the tail slots: free ones go at once; objects in
        the tail are relocated (mode migrate, to free slots below the new end or on other active
        devices) or refused (mode evict) — ConflictError unless `force`, which drops what cannot
        stay. Locked objects in the tail block without `force`."""
        self._check_open()
        if mode not in RESIZE_MODES:
            raise ConfigError(f"mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
        size = parse_size(size, "size")
        with self._lock:
            dev = self._find_locked(path)
            index = self._devices.index(dev)
            if dev.state not in (ACTIVE, DRAINING):
                raise ConflictError(f"device {dev.path!r} cannot be resized while {dev.state}")
            new_slots = self._check_size(dev.path, size, dev.is_dax, self._dax_limit(dev), dev.align)
            old_size, old_slots = dev.size, dev.slots_total
            if size == old_size:
                return self._resize_result(dev, index, old_size, 0, 0)
            previous = dev.state
            dev.state = RESIZING
        moved = evicted = 0
        try:
            if new_slots < old_slots:
                moved, evicted = self._clear_tail(dev, new_slots, mode=mode, force=force)
            elif not dev.is_dax:
                self._extend_file(dev.fd, dev.path, size)
            with self._lock:
                self._remap_locked(dev, size, new_slots)
                dev.state = previous
                self._cond.notify_all()
        except BaseException:
            with self._lock:
                if dev.state == RESIZING:
                    if new_slots < dev.slots_total:  # a refused shrink gives its tail back
                        self._restore_tail_free_locked(dev, new_slots)
                    dev.state = previous
                    self._cond.notify_all()
            raise
        log.info("dax: resized device %s from %d to %d bytes", dev.path, old_size, size)
        with self._lock:
            return self._resize_result(dev, index, old_size, moved, evicted)

    def _resize_result(self, dev: _Device, index: int, old_size: int, moved: int, evicted: int) -> dict[str, Any]:
        return {
            "status": "ok",
            "operation": "resize",
            "device_path": dev.path,
            "index": index,
            "old_size_bytes": old_size,
            "new_size_bytes": dev.size,
            "slots_total": dev.slots_total,
            "moved_keys": moved,
            "deleted_keys": evicted,
            "state": dev.state,
        }

    # ------------------------------------------------------------------ I/O

    def put(self, key: ObjectKey, payload: memoryview) -> bool:
        """Write into a free slot (an overwrite takes a new slot, then frees the old one)."""
        src = payload
        name = key.to_storage_name().encode("utf-8")
        if src.nbytes > self.max_payload_bytes or len(name) > MAX_NAME_BYTES:
            return False
        header = encode_header(src)
        with self._lock:
            if self._closed:
                return False
            dev = self._pick_device_locked()
            if dev is None:
                return False
            slot = heapq.heappop(dev.free)
            dev.writing.add(slot)
            dev.io += 1
            self._seq += 1
            seq = self._seq
        ok = self._write_slot(dev, slot, name, seq, header, src)
        with self._lock:
            dev.writing.discard(slot)
            dev.io -= 1
            published = False
            if ok and dev.state in _READABLE and dev.mm is not None:
                self._publish_locked(key, dev, slot, src.nbytes, seq)
                published = True
            elif dev.mm is not None and dev.state != FAILED:
                self._release_slot_locked(dev, slot)
            self._after_io_locked(dev)
            return published

    def _write_slot(self, dev: _Device, slot: int, name: bytes, seq: int, header: bytes, src: memoryview) -> bool:
        base = dev.slot_offset(slot)
        try:
            assert dev.mm is not None
            with memoryview(dev.mm) as mv:
                _copy(mv[base + SLOT_OVERHEAD : base + SLOT_OVERHEAD + src.nbytes], src)
                mv[base + RECORD_BYTES : base + SLOT_OVERHEAD] = header
                self._persist(dev, base + RECORD_BYTES, HEADER_SIZE + src.nbytes)
                record = _encode_record(name, seq, src.nbytes)
                mv[base : base + len(record)] = record  # last: the slot becomes valid only now
                self._persist(dev, base, len(record))
            return True
        except (OSError, ValueError, BufferError, AssertionError) as exc:
            self._fail_device(dev, exc)
            return False

    def _persist(self, dev: _Device, offset: int, length: int) -> None:
        # On Device-DAX a flush is what makes the bytes durable; a file's page cache survives a
        # process crash, and its write-back is the kernel's business.
        if dev.is_dax and dev.mm is not None:
            page = mmap.PAGESIZE
            start = offset - offset % page
            dev.mm.flush(start, offset + length - start)

    def get_into(self, key: ObjectKey, buffer: memoryview) -> bool:
        """Copy the object out and verify it; a corrupt one is freed and IntegrityError raised."""
        dst = buffer
        failure: IntegrityError | None = None
        with self._lock:
            loc = self._pin_locked(key)
            if loc is None or loc.length != dst.nbytes:
                if loc is not None:
                    self._unpin_locked(loc)
                return False
        dev, base = loc.device, loc.device.slot_offset(loc.slot)
        corrupt = False
        try:
            assert dev.mm is not None
            with memoryview(dev.mm) as mv:
                header = decode_header(mv[base + RECORD_BYTES : base + SLOT_OVERHEAD])
                if header.payload_length != loc.length:
                    raise IntegrityError("header length differs from the slot directory")
                _copy(dst, mv[base + SLOT_OVERHEAD : base + SLOT_OVERHEAD + loc.length])
            verify(header, dst)
        except IntegrityError as exc:
            log.warning("dax: %r on %s slot %d failed verification (%s); dropped", key, dev.path, loc.slot, exc)
            corrupt, failure = True, exc
        finally:
            with self._lock:
                self._unpin_locked(loc)
                if corrupt:
                    self._checksum_failures += 1
                    if self._index.get(key) is loc:
                        self._drop_locked(key)
                        self._maybe_finish_drain_locked(dev)
        if failure is not None:
            raise failure
        return True

    # ------------------------------------------------------------------ index bookkeeping (hold the lock)

    def _pick_device_locked(self) -> _Device | None:
        candidates = [d for d in self._devices if d.state == ACTIVE and d.free and d.mm is not None and not d.exclusive]
        if not candidates:
            return None
        if self.placement == "round_robin":
            self._rr = (self._rr + 1) % len(candidates)
            return candidates[self._rr]
        return max(candidates, key=lambda d: len(d.free))

    def _publish_locked(self, key: ObjectKey, dev: _Device, slot: int, length: int, seq: int) -> None:
        old = self._index.get(key)
        if old is not None:
            self._drop_locked(key, keep_lock=True)
            if old.device is not dev:
                self._maybe_finish_drain_locked(old.device)
        self._index[key] = _Loc(dev, slot, length, seq)
        dev.owner[slot] = key
        dev.used += 1
        self._bytes_by_salt[key.cache_salt] = self._bytes_by_salt.get(key.cache_salt, 0) + self.slot_bytes
        self._sorted_names = None

    def _drop_locked(self, key: ObjectKey, *, keep_lock: bool = False) -> None:
        loc = self._index.pop(key)
        dev = loc.device
        if loc.slot < len(dev.owner) and dev.owner[loc.slot] == key:
            dev.owner[loc.slot] = None
        dev.used -= 1
        remaining = self._bytes_by_salt.get(key.cache_salt, 0) - self.slot_bytes
        if remaining > 0:
            self._bytes_by_salt[key.cache_salt] = remaining
        else:
            self._bytes_by_salt.pop(key.cache_salt, None)
        if not keep_lock:  # the object is gone for good (forced removal, corruption): so are its locks
            self._key_locks.discard([key])
        self._sorted_names = None
        self._release_slot_locked(dev, loc.slot)

    def _release_slot_locked(self, dev: _Device, slot: int) -> None:
        """Free a slot: clear its record now (so it never comes back after a restart) and return
        it to the free list once no reader holds it."""
        if dev.mm is not None and dev.state != FAILED:
            try:
                base = dev.slot_offset(slot)
                dev.mm[base : base + _RECORD_FIXED] = bytes(_RECORD_FIXED)
                self._persist(dev, base, _RECORD_FIXED)
            except (OSError, ValueError) as exc:
                self._fail_device(dev, exc)
                return
        if slot >= dev.slots_total:
            return
        if dev.readers.get(slot):
            dev.pending_free.add(slot)
        else:
            heapq.heappush(dev.free, slot)

    def _pin_locked(self, key: ObjectKey) -> _Loc | None:
        loc = self._index.get(key)
        if loc is None:
            return None
        dev = loc.device
        if dev.exclusive:
            self._cond.wait_for(lambda: not dev.exclusive, timeout=self.reconfigure_timeout_s)
            loc = self._index.get(key)
            if loc is None or loc.device.exclusive:
                return None
            dev = loc.device
        if dev.state not in _READABLE or dev.mm is None:
            return None
        dev.readers[loc.slot] = dev.readers.get(loc.slot, 0) + 1
        dev.io += 1
        return loc

    def _unpin_locked(self, loc: _Loc) -> None:
        dev = loc.device
        count = dev.readers.get(loc.slot, 0) - 1
        if count > 0:
            dev.readers[loc.slot] = count
        else:
            dev.readers.pop(loc.slot, None)
            if loc.slot in dev.pending_free:
                dev.pending_free.discard(loc.slot)
                if loc.slot < dev.slots_total:
                    heapq.heappush(dev.free, loc.slot)
        dev.io -= 1
        self._after_io_locked(dev)

    def _after_io_locked(self, dev: _Device) -> None:
        if dev.io == 0:
            self._cond.notify_all()
            self._maybe_finish_drain_locked(dev)

    def _maybe_finish_drain_locked(self, dev: _Device) -> None:
        if dev.state == DRAINING and dev.used == 0 and not dev.writing and dev.io == 0:
            self._finish_removal_locked(dev)
            log.info("dax: drained device %s is empty and removed", dev.path)

    def _locked_count_locked(self, dev: _Device) -> int:
        # walk the lock table (small), not the device's slots (up to millions)
        return sum(
            1 for key in self._key_locks.locked_keys() if (loc := self._index.get(key)) is not None and loc.device is dev
        )

    def _find_locked(self, path: str) -> _Device:
        if not isinstance(path, str) or not path.strip():
            raise ConfigError("device_path must be a non-empty path string")
        wanted = os.path.abspath(path.strip())
        for dev in self._devices:
            if dev.path == wanted and dev.state != REMOVED:
                return dev
        known = ", ".join(d.path for d in self._devices if d.state != REMOVED) or "none"
        raise NotFoundError(f"dax device {wanted!r} is not configured (configured: {known})")

    def _fail_device(self, dev: _Device, exc: BaseException) -> None:
        with self._lock:
            if dev.state in (FAILED, REMOVED):
                return
            log.error("dax: device %s failed: %s", dev.path, exc)
            dev.state = FAILED
            dev.error = f"{type(exc).__name__}: {exc}"
            for key in [k for k in dev.owner if k is not None]:
                if self._index.get(key) is not None and self._index[key].device is dev:
                    self._drop_locked(key)
            self._cond.notify_all()

    def _wait_idle_locked(self, dev: _Device, timeout: float) -> bool:
        return self._cond.wait_for(lambda: dev.io == 0 and not dev.writing, timeout=timeout)

    def _evict_all_locked(self, dev: _Device) -> int:
        dropped = 0
        for key in list(dev.owner):
            if key is not None and (loc := self._index.get(key)) is not None and loc.device is dev:
                self._drop_locked(key)
                dropped += 1
        return dropped

    def _finish_removal_locked(self, dev: _Device) -> None:
        """Wait for in-flight I/O on `dev`, clear what is left of its directory, unmap it."""
        dev.exclusive = True
        try:
            if not self._wait_idle_locked(dev, self.reconfigure_timeout_s):
                raise ConflictError(f"device {dev.path!r} still has I/O in flight; retry the removal")
            dropped = self._evict_all_locked(dev)  # stores that finished while we waited
            if dropped:
                log.warning("dax: %d object(s) written to %s during its removal were dropped", dropped, dev.path)
            dev.state = REMOVED
            self._close_device(dev)
            dev.free.clear()
            dev.pending_free.clear()
        finally:
            dev.exclusive = False
            self._cond.notify_all()

    # ------------------------------------------------------------------ migration

    def _migrate_all(self, dev: _Device, *, force: bool) -> tuple[int, int]:
        """Move every object of `dev` (state MIGRATING) to other active devices. Loops until the
        device holds nothing and no store into it is in flight, so an object acknowledged during
        the migration is never left behind."""
        moved = moved_bytes = 0
        deadline_budget = self.reconfigure_timeout_s
        rounds = 0
        while True:
            rounds += 1
            with self._lock:
                keys = [k for k in dev.owner if k is not None]
                if not keys:
                    if not dev.writing:
                        return moved, moved_bytes
                    if not self._cond.wait_for(lambda: not dev.writing, timeout=deadline_budget):
                        raise ConflictError(f"stores into {dev.path!r} did not finish; retry the removal")
                    continue
            if rounds > 1000:  # pragma: no cover - a device refilling forever is a bug, not a wait
                raise ConflictError(f"migration of {dev.path!r} did not converge")
            for key in keys:
                outcome, nbytes = self._relocate(key, dev, self._other_active_slot)
                if outcome == "moved":
                    moved += 1
                    moved_bytes += nbytes
                elif outcome == "no_room":
                    if not force:
                        raise ConflictError(
                            f"no free slot left on the other active devices to migrate {dev.path!r} "
                            f"({moved} object(s) moved so far); add capacity or pass force=true to drop the rest"
                        )
                    return moved, moved_bytes  # the caller drops what is left

    def _other_active_slot(self, source: _Device) -> tuple[_Device, int] | None:
        candidates = [d for d in self._devices if d is not source and d.state == ACTIVE and d.free and d.mm is not None]
        if not candidates:
            return None
        dest = max(candidates, key=lambda d: len(d.free))
        return dest, heapq.heappop(dest.free)

    def _relocate(
        self, key: ObjectKey, source: _Device, choose: Callable[[_Device], tuple[_Device, int] | None]
    ) -> tuple[str, int]:
        """Copy one object out of `source` into a slot from `choose` and switch the index to it.
        Returns ("moved" | "gone" | "corrupt" | "no_room", payload bytes)."""
        with self._lock:
            loc = self._index.get(key)
            if loc is None or loc.device is not source:
                return "gone", 0
            target = choose(source)
            if target is None:
                return "no_room", 0
            dest, dslot = target
            dest.writing.add(dslot)
            dest.io += 1
            source.readers[loc.slot] = source.readers.get(loc.slot, 0) + 1
            source.io += 1
            self._seq += 1
            seq = self._seq
        outcome = "moved"
        sbase, dbase = source.slot_offset(loc.slot), dest.slot_offset(dslot)
        name = key.to_storage_name().encode("utf-8")
        try:
            assert source.mm is not None and dest.mm is not None
            with memoryview(source.mm) as smv, memoryview(dest.mm) as dmv:
                header = decode_header(smv[sbase + RECORD_BYTES : sbase + SLOT_OVERHEAD])
                if header.payload_length != loc.length:
                    raise IntegrityError("header length differs from the slot directory")
                span = HEADER_SIZE + loc.length
                _copy(dmv[dbase + RECORD_BYTES : dbase + RECORD_BYTES + span], smv[sbase + RECORD_BYTES : sbase + RECORD_BYTES + span])
                # verify what landed on the destination: a corrupt source is dropped, not spread
                verify(header, dmv[dbase + SLOT_OVERHEAD : dbase + SLOT_OVERHEAD + loc.length])
                self._persist(dest, dbase + RECORD_BYTES, span)
                record = _encode_record(name, seq, loc.length)
                dmv[dbase : dbase + len(record)] = record
                self._persist(dest, dbase, len(record))
        except IntegrityError as exc:
            log.warning("dax: %r on %s failed verification during migration (%s); dropped", key, source.path, exc)
            outcome = "corrupt"
        except (OSError, ValueError, BufferError, AssertionError) as exc:
            self._fail_device(dest, exc)
            outcome = "failed"
        with self._lock:
            dest.writing.discard(dslot)
            dest.io -= 1
            self._unpin_locked(loc)
            current = self._index.get(key)
            if outcome == "moved" and current is loc and dest.state != FAILED:
                self._drop_locked(key, keep_lock=True)
                self._publish_locked(key, dest, dslot, loc.length, seq)
                self._after_io_locked(dest)
                return "moved", loc.length
            if dest.state != FAILED:
                self._release_slot_locked(dest, dslot)
            self._after_io_locked(dest)
            if outcome == "corrupt":
                self._checksum_failures += 1
                if current is loc:
                    self._drop_locked(key)
        if outcome == "corrupt":
            self._instruments.checksum_failure()
            return "corrupt", 0
        if outcome == "failed":
            return "no_room", 0
        return "gone", 0

    def _clear_tail(self, dev: _Device, new_slots: int, *, mode: str, force: bool) -> tuple[int, int]:
        """Empty slots >= new_slots of `dev` (state RESIZING) and take them out of the free list."""
        with self._lock:
            if not self._cond.wait_for(
                lambda: not any(s >= new_slots for s in dev.writing), timeout=self.reconfigure_timeout_s
            ):
                raise ConflictError(f"stores into the tail of {dev.path!r} did not finish; retry the resize")
            dev.free = [s for s in dev.free if s < new_slots]
            heapq.heapify(dev.free)
            tail = [k for k in dev.owner[new_slots:] if k is not None]
            locked = sum(1 for k in tail if self._key_locks.is_locked(k))
            if locked and not force:
                raise ConflictError(
                    f"{locked} locked object(s) in the slots a shrink of {dev.path!r} would drop; retry later or pass force=true"
                )
            if tail and mode == "evict" and not force:
                raise ConflictError(
                    f"shrinking {dev.path!r} would drop {len(tail)} object(s) in its tail slots; "
                    "use mode=migrate to relocate them or force=true to evict them"
                )
        moved = evicted = 0
        if mode == "migrate":

            def choose(source: _Device) -> tuple[_Device, int] | None:
                if source.free:  # the free list now holds only slots below the new end
                    return source, heapq.heappop(source.free)
                return self._other_active_slot(source)

            for key in tail:
                outcome, _ = self._relocate(key, dev, choose)
                if outcome == "moved":
                    moved += 1
                elif outcome == "no_room" and not force:
                    raise ConflictError(
                        f"no free slot to relocate the tail of {dev.path!r} ({moved} object(s) moved so far); "
                        "free space or pass force=true to evict the rest"
                    )
        with self._lock:
            for key in [k for k in dev.owner[new_slots:] if k is not None]:
                self._drop_locked(key)
                evicted += 1
        return moved, evicted

    def _restore_tail_free_locked(self, dev: _Device, new_slots: int) -> None:
        busy = dev.writing | dev.pending_free | set(dev.free)
        for slot in range(new_slots, dev.slots_total):
            if dev.owner[slot] is None and slot not in busy:
                heapq.heappush(dev.free, slot)

    def _remap_locked(self, dev: _Device, size: int, new_slots: int) -> None:
        dev.exclusive = True
        try:
            if not self._wait_idle_locked(dev, self.reconfigure_timeout_s):
                raise ConflictError(f"device {dev.path!r} still has I/O in flight; retry the resize")
            old_slots = dev.slots_total
            assert dev.mm is not None
            dev.mm.flush()
            dev.mm.close()
            dev.mm = None
            try:
                dev.mm = mmap.mmap(dev.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            except (OSError, ValueError) as exc:
                self._fail_device(dev, exc)
                raise ConflictError(f"remapping {dev.path!r} to {size} bytes failed: {exc}") from None
            dev.size = size
            dev.slots_total = new_slots
            if new_slots > old_slots:
                dev.owner.extend([None] * (new_slots - old_slots))
                with _random_access(dev.mm):
                    for slot in range(old_slots, new_slots):
                        self._clear_stale_record(dev, slot)
                        heapq.heappush(dev.free, slot)
            else:
                del dev.owner[new_slots:]
                # slots freed by readers that finished during the shrink may have come back
                dev.free = [s for s in dev.free if s < new_slots]
                heapq.heapify(dev.free)
                dev.pending_free = {s for s in dev.pending_free if s < new_slots}
                if not dev.is_dax:
                    os.ftruncate(dev.fd, size)
        finally:
            dev.exclusive = False
            self._cond.notify_all()

    def _clear_stale_record(self, dev: _Device, slot: int) -> None:
        # Grown space may hold records from an earlier life of the device; reading first keeps a
        # sparse file sparse.
        assert dev.mm is not None
        base = dev.slot_offset(slot)
        if dev.mm[base : base + 4] == _RECORD_MAGIC:
            dev.mm[base : base + _RECORD_FIXED] = bytes(_RECORD_FIXED)

    # ------------------------------------------------------------------ opening and rebuilding

    def _check_open(self) -> None:
        if self._closed:
            raise NotInitializedError(f"L2 adapter {self.name!r} (dax) is closed")

    def _dax_limit(self, dev: _Device) -> int | None:
        if not dev.is_dax:
            return None
        return dax_geometry(dev.path)[0]

    def _check_size(self, path: str, size: int, is_dax: bool, dax_size: int | None, align: int = DEFAULT_DAX_ALIGN) -> int:
        slots = (size - SUPERBLOCK_BYTES) // self.slot_bytes if size > SUPERBLOCK_BYTES else 0
        if slots < 1:
            raise InvalidSizeError(
                f"size {size} of {path!r} does not fit one slot: at least {SUPERBLOCK_BYTES + self.slot_bytes} bytes"
            )
        if is_dax:
            if size % align:
                raise InvalidSizeError(f"size {size} of {path!r} must be a multiple of the device alignment {align}")
            if dax_size is not None and size > dax_size:
                raise InvalidSizeError(f"size {size} of {path!r} exceeds the device's {dax_size} bytes")
        return slots

    def _extend_file(self, fd: int, path: str, size: int) -> None:
        extend_file(fd, path, size, preallocate=self.preallocate)

    def _open_device(self, path: str, size: int | None, *, where: str) -> _Device:
        info = inspect_device(path, size, where=where)
        path = info.path
        slots = self._check_size(path, info.size, info.is_dax, info.dax_size, info.align)
        fd = open_device(info, where=where, create=True)
        try:
            if not info.is_dax:
                self._check_foreign_file(fd, path, info.exists, where)
                self._extend_file(fd, path, info.size)
            mm = map_device(fd, path, info.size, where=where)
        except BaseException:
            os.close(fd)
            raise
        dev = _Device(
            path=path,
            size=info.size,
            is_dax=info.is_dax,
            align=info.align,
            fd=fd,
            mm=mm,
            identity=device_identity(os.fstat(fd)),
            slots_total=slots,
            slot_bytes=self.slot_bytes,
            owner=[None] * slots,
        )
        try:
            self._check_superblock(dev, where)
        except BaseException:
            self._close_device(dev)
            raise
        return dev

    def _check_foreign_file(self, fd: int, path: str, existed: bool, where: str) -> None:
        if not existed or os.fstat(fd).st_size == 0:
            return
        head = os.pread(fd, _SUPER.size, 0)
        if head[:8] != _SUPER_MAGIC and head.strip(b"\x00"):
            raise ConfigError(f"{where}: {path!r} exists and is not an lmcache dax device file; refusing to overwrite it")

    def _check_superblock(self, dev: _Device, where: str) -> None:
        assert dev.mm is not None
        raw = dev.mm[: _SUPER.size + 8]
        magic, version, record_bytes, slot_bytes = _SUPER.unpack_from(raw, 0)
        (digest,) = struct.unpack_from(">Q", raw, _SUPER.size)
        valid = magic == _SUPER_MAGIC and xxhash.xxh3_64_intdigest(raw[: _SUPER.size]) == digest
        if valid:
            if version != _SUPER_VERSION or record_bytes != RECORD_BYTES:
                raise ConfigError(f"{where}: {dev.path!r} has an unsupported dax layout (version {version})")
            if slot_bytes != self.slot_bytes:
                raise ConfigError(
                    f"{where}: {dev.path!r} was formatted with slot_bytes={slot_bytes}, this adapter uses "
                    f"slot_bytes={self.slot_bytes}; configure the same slot_bytes or wipe the device"
                )
            return
        # A fresh device: format it. Slot records written by another layout cannot validate.
        fixed = _SUPER.pack(_SUPER_MAGIC, _SUPER_VERSION, RECORD_BYTES, self.slot_bytes)
        dev.mm[: _SUPER.size + 8] = fixed + struct.pack(">Q", xxhash.xxh3_64_intdigest(fixed))
        self._persist(dev, 0, _SUPER.size + 8)

    def _rebuild_locked(self, dev: _Device) -> int:
        """Index the valid slots of a freshly opened device; invalid ones become free."""
        assert dev.mm is not None
        mm = dev.mm
        found: dict[ObjectKey, tuple[int, int, int]] = {}
        stale: list[int] = []
        free: list[int] = []
        with _random_access(mm):
            for slot in range(dev.slots_total):
                self._scan_slot(dev, slot, found, stale, free)
        for slot in stale:
            base = dev.slot_offset(slot)
            mm[base : base + _RECORD_FIXED] = bytes(_RECORD_FIXED)
        free.extend(stale)
        heapq.heapify(free)
        dev.free = free
        adopted = 0
        for key, (slot, seq, length) in found.items():
            self._seq = max(self._seq, seq)
            existing = self._index.get(key)
            if existing is not None and existing.seq >= seq:
                base = dev.slot_offset(slot)
                mm[base : base + _RECORD_FIXED] = bytes(_RECORD_FIXED)
                heapq.heappush(dev.free, slot)
                continue
            self._publish_locked(key, dev, slot, length, seq)
            adopted += 1
        if stale:
            log.warning("dax: %d invalid slot(s) on %s freed", len(stale), dev.path)
        return adopted

    def _scan_slot(
        self,
        dev: _Device,
        slot: int,
        found: dict[ObjectKey, tuple[int, int, int]],
        stale: list[int],
        free: list[int],
    ) -> None:
        assert dev.mm is not None
        mm = dev.mm

        base = dev.slot_offset(slot)
        if mm[base : base + 4] != _RECORD_MAGIC:
            free.append(slot)
            return
        parsed = _decode_record(mm[base : base + RECORD_BYTES])
        key = None
        if parsed is not None and parsed[2] <= self.max_payload_bytes:
            try:
                key = ObjectKey.from_storage_name(parsed[0])
                header = decode_header(mm[base + RECORD_BYTES : base + SLOT_OVERHEAD])
                if header.payload_length != parsed[2]:
                    key = None
            except (InvalidKeyError, IntegrityError):
                key = None
        if key is None or parsed is None:
            stale.append(slot)
            return
        _, seq, length = parsed
        previous = found.get(key)
        if previous is not None:
            # the same key twice: a crash between writing the new copy and freeing the old
            stale.append(previous[0] if previous[1] < seq else slot)
            if previous[1] > seq:
                return
        found[key] = (slot, seq, length)

    def _close_device(self, dev: _Device) -> None:
        error = unmap_device(dev.mm, dev.fd)
        if error is not None:
            log.warning("dax: unmapping %s failed: %s", dev.path, error)
        dev.mm = None
        dev.fd = -1

    # ------------------------------------------------------------------ reports

    def _device_report_locked(self, dev: _Device) -> dict[str, Any]:
        report: dict[str, Any] = {
            "path": dev.path,
            "state": dev.state,
            "size": dev.size,
            "slots_total": dev.slots_total if dev.state != REMOVED else 0,
            "slots_used": dev.used,
            "device_type": "devdax" if dev.is_dax else "file",
            "locked_key_count": self._locked_count_locked(dev),
        }
        if dev.error:
            report["error"] = dev.error
        return report

    def _device_reconfigure_locked(self, dev: _Device) -> dict[str, Any]:
        return {
            "device_path": dev.path,
            "state": dev.state,
            "is_healthy": dev.state != FAILED,
            "size_bytes": dev.size,
            "slot_bytes": self.slot_bytes,
            "slots_total": dev.slots_total if dev.state != REMOVED else 0,
            "slots_used": dev.used,
            "slots_free": len(dev.free),
            "locked_key_count": self._locked_count_locked(dev),
            "device_type": "devdax" if dev.is_dax else "file",
            "alignment": dev.align if dev.is_dax else None,
        }


class DaxL2Adapter(BackendL2Adapter):
    """The `dax` kind: a DaxBackend behind the standard L2 stack; reconfigurable at run time."""

    backend: DaxBackend

    def __init__(
        self,
        devices: Sequence[DaxDeviceConfig | Mapping[str, Any]],
        slot_bytes: int,
        *,
        max_workers: int = 4,
        placement: str = "most_free",
        preallocate: bool = True,
        name: str = "dax",
        metrics: MetricsSink | None = None,
        reconfigure_timeout_s: float = DEFAULT_RECONFIGURE_TIMEOUT_S,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or not 1 <= max_workers <= MAX_WORKERS_LIMIT:
            raise ConfigError(f"max_workers must be an integer in 1..{MAX_WORKERS_LIMIT}, got {max_workers!r}")
        instruments = L2Instruments(metrics, adapter=name, kind=DaxBackend.kind)
        backend = DaxBackend(
            devices,
            slot_bytes,
            placement=placement,
            preallocate=preallocate,
            name=name,
            instruments=instruments,
            reconfigure_timeout_s=reconfigure_timeout_s,
        )
        # memory speed: one task per batch, keys in order
        super().__init__(backend, name=name, max_workers=max_workers, instruments=instruments, split_batches=False)

    @property
    def slot_bytes(self) -> int:
        return self.backend.slot_bytes

    def owns_device(self, device_path: str) -> bool:
        """OwnsDevices: the backend's answer."""
        return self.backend.owns_device(device_path)

    def probe(self) -> None:
        """ProbesBackend: the backend's probe."""
        self.backend.probe()

    def reconfigure_status(self) -> dict[str, Any]:
        """Reconfigurable: the backend's devices."""
        return self.backend.reconfigure_status()

    def apply_reconfiguration(self, operation: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        """Reconfigurable: add / remove / resize a device."""
        return self.backend.apply_reconfiguration(operation, body)

    def add_device(self, path: str, size: int | None) -> dict[str, Any]:
        return self.backend.add_device(path, size)

    def remove_device(self, path: str, *, mode: str = "migrate", force: bool = False) -> dict[str, Any]:
        return self.backend.remove_device(path, mode=mode, force=force)

    def resize_device(self, path: str, size: int, *, mode: str = "migrate", force: bool = False) -> dict[str, Any]:
        return self.backend.resize_device(path, size, mode=mode, force=force)


# ---------------------------------------------------------------------- factory

DAX_FIELDS: Mapping[str, ConfigField] = {
    "devices": config_field(
        list,
        required=True,
        help='devices to map: [{"path": "/dev/dax0.0" or a file, "size": bytes or "100GiB"}] (size optional for /dev/dax)',
    ),
    "slot_bytes": config_field(int, str, required=True, help='fixed slot size, bytes or "4MiB"; objects up to slot_bytes - 544 fit'),
    "max_workers": config_field(int, help=f"I/O threads, 1..{MAX_WORKERS_LIMIT} (default 4)"),
    "placement": config_field(str, help="where new objects go: most_free (default) or round_robin"),
    "preallocate": config_field(bool, help="reserve a file's blocks up front (default true; false keeps test files sparse)"),
}


def create_dax_adapter(config: dict[str, Any], services: Any) -> DaxL2Adapter:
    """Factory registered for kind `dax`: `config` is the `--l2-adapter` JSON without `type`."""
    allowed = {**COMMON_FIELDS, **DAX_FIELDS}
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown field(s) for L2 adapter 'dax': {', '.join(unknown)} (accepted: {', '.join(sorted(DAX_FIELDS))})")
    for field_name, spec in DAX_FIELDS.items():
        value = config.get(field_name)
        if value is None:
            if spec.required:
                raise ConfigError(f"L2 adapter 'dax' requires field {field_name!r}")
            continue
        if not spec.accepts(value):
            raise ConfigError(f"field {field_name!r} of L2 adapter 'dax' must be {spec.type_names()}, got {value!r}")
    context = StackContext.of(services, config, "dax")
    return DaxL2Adapter(
        config["devices"],
        config["slot_bytes"],
        max_workers=config.get("max_workers") or 4,
        placement=config.get("placement") or "most_free",
        preallocate=True if config.get("preallocate") is None else config["preallocate"],
        name=context.name,
        metrics=context.metrics,
    )


# ---------------------------------------------------------------------- helpers


def _only_fields(body: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ConfigError(f"unknown field(s) in {where} body: {', '.join(unknown)}")


def _without(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    out = dict(body)
    value = out.pop(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return out


def _choice(value: Any, choices: Sequence[str], name: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value.strip().lower()


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value
