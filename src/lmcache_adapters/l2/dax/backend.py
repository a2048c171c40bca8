"""`DaxBackend`: the StorageBackend port over fixed-size slots in mmap'ed Device-DAX devices
(or regular files), composed of the slot index, slot I/O and the reconfiguration state machine."""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lmcache_adapters.l2.dax.config import (
    DEFAULT_RECONFIGURE_TIMEOUT_S,
    PLACEMENTS,
    DaxDeviceConfig,
    device_configs,
)
from lmcache_adapters.l2.dax.device import (
    ACTIVE,
    FAILED,
    READABLE,
    REMOVED,
    Device,
    close_device,
    open_slotted_device,
)
from lmcache_adapters.l2.dax.index import SlotIndex
from lmcache_adapters.l2.dax.layout import MAX_NAME_BYTES, MIN_SLOT_BYTES, SLOT_OVERHEAD
from lmcache_adapters.l2.dax.reconfigure import Reconfigurer
from lmcache_adapters.l2.dax.reports import device_report_locked
from lmcache_adapters.l2.dax.requests import parse_request
from lmcache_adapters.l2.dax.sizes import parse_size
from lmcache_adapters.l2.dax.slot_io import DEVICE_ERRORS, read_slot, write_slot
from lmcache_adapters.l2.instruments import L2Instruments
from lmcache_adapters.l2.integrity import IntegrityError, encode_header
from lmcache_adapters.l2.listing import check_page_args, page_of
from lmcache_adapters.memory.devices import device_identity
from lmcache_core.errors import BackendUnavailableError, ConfigError
from lmcache_core.keys import ObjectKey
from lmcache_core.ports import KeyLockView, KeyPage, L2Usage

__all__ = ["DaxBackend"]

log = logging.getLogger(__name__)


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
        configs = device_configs(list(devices))
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
        instruments = instruments or L2Instruments(None, adapter=name, kind=self.kind)
        self.slots = SlotIndex(slot_bytes, placement=placement, reconfigure_timeout_s=reconfigure_timeout_s)
        self.reconfigurer = Reconfigurer(self.slots, name=name, preallocate=preallocate, instruments=instruments)
        seen: set[tuple[int, int, int]] = set()
        try:
            for i, cfg in enumerate(configs):
                where = f"devices[{i}]"
                dev = open_slotted_device(cfg.path, cfg.size, slot_bytes, preallocate=preallocate, where=where)
                if dev.identity in seen:
                    close_device(dev)
                    raise ConfigError(f"devices[{i}].path {cfg.path!r} is configured twice")
                seen.add(dev.identity)
                with self.slots.lock:
                    self.slots.devices.append(dev)
                    self.slots.rebuild_locked(dev)
        except BaseException:
            for dev in self.slots.devices:
                close_device(dev)
            raise

    # ------------------------------------------------------------------ StorageBackend

    def attach_key_locks(self, locks: KeyLockView) -> None:
        """SeesKeyLocks: locked objects block a removal or shrink without `force`."""
        self.slots.key_locks = locks

    def exists(self, key: ObjectKey) -> bool:
        with self.slots.lock:
            return self.slots.readable_locked(key)

    def delete(self, key: ObjectKey) -> bool:
        """Remove `key`; a draining device that becomes empty is removed."""
        slots = self.slots
        with slots.lock:
            loc = slots.locations.get(key)
            if loc is None:
                return False
            slots.drop_locked(key)
            slots.maybe_finish_drain_locked(loc.device)
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
        names, name_to_key = self.slots.sorted_names()
        return page_of(names, name_to_key.__getitem__, page_size, page_token, model_name=model_name, cache_salt=cache_salt)

    def usage(self) -> L2Usage:
        """Bytes in occupied slots (whole slots: what is really unavailable), capacity of the
        devices still holding data, and bytes per cache_salt."""
        slots = self.slots
        with slots.lock:
            return L2Usage(
                used_bytes=slots.used_bytes_locked(),
                capacity_bytes=slots.capacity_bytes_locked(),
                bytes_by_salt=slots.bytes_by_salt_locked(),
            )

    def probe(self) -> None:
        """Readiness: at least one device is active and each active device's path still names
        the device that is mapped (not removed or replaced since)."""
        with self.slots.lock:
            active = [(d.path, d.identity) for d in self.slots.devices if d.state == ACTIVE]
            failed = [d.path for d in self.slots.devices if d.state == FAILED]
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
        slots = self.slots
        with slots.lock:
            devices = [device_report_locked(slots, d) for d in slots.devices]
            failed = [d.path for d in slots.devices if d.state == FAILED]
            healthy = not slots.closed and not failed and any(d.state == ACTIVE for d in slots.devices)
            report: dict[str, Any] = {
                "is_healthy": healthy,
                "type": type(self).__name__,
                "kind": self.kind,
                "name": self.name,
                "placement": self.placement,
                "devices": devices,
                "slot_bytes": self.slot_bytes,
                "max_object_bytes": self.max_payload_bytes,
                "stored_object_count": len(slots.locations),
                "used_bytes": slots.used_bytes_locked(),
                "capacity_bytes": slots.capacity_bytes_locked(),
                "checksum_failures": slots.checksum_failures,
            }
            if failed:
                report["error"] = f"failed device(s): {', '.join(failed)}"
            return report

    def close(self) -> None:
        """Finish queued operations, flush and unmap every device. Idempotent."""
        slots = self.slots
        with slots.lock:
            if slots.closed:
                return
            slots.closed = True
        with slots.lock:
            for dev in slots.devices:
                if dev.mm is not None:
                    slots.wait_idle_locked(dev, self.reconfigure_timeout_s)
                close_device(dev)
            slots.locations.clear()

    def __repr__(self) -> str:
        return f"DaxBackend(name={self.name!r}, devices={[d.path for d in self.slots.devices]}, slot_bytes={self.slot_bytes})"

    def owns_device(self, device_path: str) -> bool:
        """Whether a device of this adapter (not removed) is the file or device at `device_path`."""
        try:
            identity = device_identity(os.stat(device_path))
        except (OSError, ValueError, TypeError):
            return False
        with self.slots.lock:
            return any(d.state != REMOVED and d.identity == identity for d in self.slots.devices)

    # ------------------------------------------------------------------ runtime reconfiguration

    def reconfigure_status(self) -> dict[str, Any]:
        """`{"backend": "dax", "supported_operations": [...], "status": {...}}` for
        `GET /reconfigure/dax/status` (the HTTP layer adds the backend-local adapter_index)."""
        return self.reconfigurer.status()

    def apply_reconfiguration(self, operation: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        """Apply one operation of `POST /reconfigure/dax/<operation>` (bodies: see
        `lmcache_adapters.l2.dax.requests`) and return its result.

        Raises ConfigError for a bad body (InvalidSizeError / UnsupportedOperationError for the
        reference's 400 cases), NotFoundError for an unknown device, ConflictError when the
        device's state or contents forbid it now, ForbiddenOperationError for removing the last
        active device."""
        return self.reconfigurer.apply(parse_request(operation, body))

    def add_device(self, path: str, size: int | None) -> dict[str, Any]:
        """Map one more device (see `Reconfigurer.add_device`)."""
        return self.reconfigurer.add_device(path, size)

    def remove_device(self, path: str, *, mode: str = "migrate", force: bool = False) -> dict[str, Any]:
        """Take a device out of service (see `Reconfigurer.remove_device`)."""
        return self.reconfigurer.remove_device(path, mode=mode, force=force)

    def resize_device(self, path: str, size: int, *, mode: str = "migrate", force: bool = False) -> dict[str, Any]:
        """Grow or shrink a device (see `Reconfigurer.resize_device`)."""
        return self.reconfigurer.resize_device(path, size, mode=mode, force=force)

    # ------------------------------------------------------------------ I/O

    def put(self, key: ObjectKey, payload: memoryview) -> bool:
        """Write into a free slot (an overwrite takes a new slot, then frees the old one)."""
        src = payload
        name = key.to_storage_name().encode("utf-8")
        if src.nbytes > self.max_payload_bytes or len(name) > MAX_NAME_BYTES:
            return False
        header = encode_header(src)
        slots = self.slots
        with slots.lock:
            if slots.closed:
                return False
            dev = slots.pick_device_locked()
            if dev is None:
                return False
            slot = heapq.heappop(dev.free)
            dev.writing.add(slot)
            dev.io += 1
            seq = slots.next_seq_locked()
        ok = self._write(dev, slot, name, seq, header, src)
        with slots.lock:
            dev.writing.discard(slot)
            dev.io -= 1
            published = False
            if ok and dev.state in READABLE and dev.mm is not None:
                slots.publish_locked(key, dev, slot, src.nbytes, seq)
                published = True
            elif dev.mm is not None and dev.state != FAILED:
                slots.release_slot_locked(dev, slot)
            slots.after_io_locked(dev)
            return published

    def _write(self, dev: Device, slot: int, name: bytes, seq: int, header: bytes, src: memoryview) -> bool:
        try:
            write_slot(dev, slot, name, seq, header, src)
            return True
        except DEVICE_ERRORS as exc:
            self.slots.fail_device(dev, exc)
            return False

    def get_into(self, key: ObjectKey, buffer: memoryview) -> bool:
        """Copy the object out and verify it; a corrupt one is freed and IntegrityError raised."""
        dst = buffer
        slots = self.slots
        with slots.lock:
            loc = slots.pin_locked(key)
            if loc is None or loc.length != dst.nbytes:
                if loc is not None:
                    slots.unpin_locked(loc)
                return False
        failure: IntegrityError | None = None
        try:
            read_slot(loc.device, loc.slot, loc.length, dst)
        except IntegrityError as exc:
            log.warning("dax: %r on %s slot %d failed verification (%s); dropped", key, loc.device.path, loc.slot, exc)
            failure = exc
        finally:
            with slots.lock:
                slots.unpin_locked(loc)
                if failure is not None:
                    slots.corrupt_locked(key, loc)
        if failure is not None:
            raise failure
        return True
