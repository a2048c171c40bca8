"""The slot index: which key lives in which slot of which device, and every rule that keeps
that bookkeeping right (placement, publish / drop, pins of readers, failed devices, draining,
rebuilding from the slot records). One lock guards it; methods named `*_locked` need it held."""

from __future__ import annotations

import heapq
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from lmcache_adapters.l2.dax.device import (
    ACTIVE,
    DRAINING,
    FAILED,
    IN_CAPACITY,
    READABLE,
    REMOVED,
    Device,
    clear_record,
    close_device,
    random_access,
)
from lmcache_adapters.l2.dax.layout import RECORD_BYTES, RECORD_MAGIC, SLOT_OVERHEAD, decode_record
from lmcache_adapters.l2.integrity import IntegrityError, decode_header
from lmcache_core.errors import (
    ConfigError,
    ConflictError,
    InvalidKeyError,
    NotFoundError,
    NotInitializedError,
)
from lmcache_core.keys import ObjectKey
from lmcache_core.ports import KeyLockView

__all__ = ["Location", "NoLocks", "SlotIndex"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Location:
    """Where one key lives."""

    device: Device
    slot: int
    length: int
    seq: int


class NoLocks:
    """The lock view of a backend used without the standard stack: nothing is ever locked."""

    def is_locked(self, key: ObjectKey) -> bool:
        return False

    def locked_keys(self) -> list[ObjectKey]:
        return []

    def discard(self, keys: Sequence[ObjectKey]) -> None:
        return None


class SlotIndex:
    """Devices, the key -> slot map and per-salt bytes, under one lock and condition."""

    def __init__(self, slot_bytes: int, *, placement: str, reconfigure_timeout_s: float) -> None:
        self.slot_bytes = slot_bytes
        self.max_payload_bytes = slot_bytes - SLOT_OVERHEAD
        self.placement = placement
        self.reconfigure_timeout_s = reconfigure_timeout_s
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.devices: list[Device] = []
        self.locations: dict[ObjectKey, Location] = {}
        self.key_locks: KeyLockView = NoLocks()
        self.checksum_failures = 0
        self.closed = False
        self._bytes_by_salt: dict[str, int] = {}
        self._seq = 0
        self._rr = 0
        self._sorted_names: list[str] | None = None
        self._name_to_key: dict[str, ObjectKey] = {}

    # ------------------------------------------------------------------ reading

    def check_open(self, name: str) -> None:
        """NotInitializedError once the backend named `name` is closed."""
        if self.closed:
            raise NotInitializedError(f"L2 adapter {name!r} (dax) is closed")

    def readable_locked(self, key: ObjectKey) -> bool:
        loc = self.locations.get(key)
        return loc is not None and loc.device.state in READABLE

    def sorted_names(self) -> tuple[list[str], dict[str, ObjectKey]]:
        """Storage names in order and the key of each (rebuilt after a change, then shared)."""
        with self.lock:
            if self._sorted_names is None:
                self._name_to_key = {key.to_storage_name(): key for key in self.locations}
                self._sorted_names = sorted(self._name_to_key)
            return self._sorted_names, self._name_to_key

    def used_bytes_locked(self) -> int:
        """Bytes in occupied slots (whole slots: what is really unavailable)."""
        return len(self.locations) * self.slot_bytes

    def capacity_bytes_locked(self) -> int:
        """Bytes of slots on the devices still holding data."""
        return sum(d.slots_total for d in self.devices if d.state in IN_CAPACITY) * self.slot_bytes

    def bytes_by_salt_locked(self) -> dict[str, int]:
        return dict(self._bytes_by_salt)

    def locked_count_locked(self, dev: Device) -> int:
        """How many objects on `dev` hold lookup locks."""
        # walk the lock table (small), not the device's slots (up to millions)
        return sum(
            1 for key in self.key_locks.locked_keys() if (loc := self.locations.get(key)) is not None and loc.device is dev
        )

    def find_locked(self, path: str) -> Device:
        """The configured (not removed) device at `path`; NotFoundError otherwise."""
        if not isinstance(path, str) or not path.strip():
            raise ConfigError("device_path must be a non-empty path string")
        wanted = os.path.abspath(path.strip())
        for dev in self.devices:
            if dev.path == wanted and dev.state != REMOVED:
                return dev
        known = ", ".join(d.path for d in self.devices if d.state != REMOVED) or "none"
        raise NotFoundError(f"dax device {wanted!r} is not configured (configured: {known})")

    # ------------------------------------------------------------------ placing and publishing

    def next_seq_locked(self) -> int:
        """A sequence number newer than any record written or adopted so far."""
        self._seq += 1
        return self._seq

    def pick_device_locked(self) -> Device | None:
        """The device a new object goes to (by the placement policy), or None when all are full."""
        candidates = [d for d in self.devices if d.state == ACTIVE and d.free and d.mm is not None and not d.exclusive]
        if not candidates:
            return None
        if self.placement == "round_robin":
            self._rr = (self._rr + 1) % len(candidates)
            return candidates[self._rr]
        return max(candidates, key=lambda d: len(d.free))

    def other_active_slot_locked(self, source: Device) -> tuple[Device, int] | None:
        """A free slot on the active device other than `source` with the most room."""
        candidates = [d for d in self.devices if d is not source and d.state == ACTIVE and d.free and d.mm is not None]
        if not candidates:
            return None
        dest = max(candidates, key=lambda d: len(d.free))
        return dest, heapq.heappop(dest.free)

    def publish_locked(self, key: ObjectKey, dev: Device, slot: int, length: int, seq: int) -> None:
        """Make `key` live in `slot` of `dev` (an older copy elsewhere is freed, its locks kept)."""
        old = self.locations.get(key)
        if old is not None:
            self.drop_locked(key, keep_lock=True)
            if old.device is not dev:
                self.maybe_finish_drain_locked(old.device)
        self.locations[key] = Location(dev, slot, length, seq)
        dev.owner[slot] = key
        dev.used += 1
        self._bytes_by_salt[key.cache_salt] = self._bytes_by_salt.get(key.cache_salt, 0) + self.slot_bytes
        self._sorted_names = None

    def drop_locked(self, key: ObjectKey, *, keep_lock: bool = False) -> None:
        """Forget `key` and free its slot."""
        loc = self.locations.pop(key)
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
            self.key_locks.discard([key])
        self._sorted_names = None
        self.release_slot_locked(dev, loc.slot)

    def release_slot_locked(self, dev: Device, slot: int) -> None:
        """Free a slot: clear its record now (so it never comes back after a restart) and return
        it to the free list once no reader holds it."""
        if dev.mm is not None and dev.state != FAILED:
            try:
                clear_record(dev, slot)
            except (OSError, ValueError) as exc:
                self.fail_device(dev, exc)
                return
        if slot >= dev.slots_total:
            return
        if dev.readers.get(slot):
            dev.pending_free.add(slot)
        else:
            heapq.heappush(dev.free, slot)

    def corrupt_locked(self, key: ObjectKey, loc: Location) -> None:
        """Count a failed verification and drop `key` if it still lives at `loc`."""
        self.checksum_failures += 1
        if self.locations.get(key) is loc:
            self.drop_locked(key)
            self.maybe_finish_drain_locked(loc.device)

    # ------------------------------------------------------------------ readers and in-flight I/O

    def pin_locked(self, key: ObjectKey) -> Location | None:
        """Hold `key`'s slot for a read (its slot is not reused until `unpin_locked`); None when
        it is not readable. Waits while its device is held exclusively by a reconfiguration."""
        loc = self.locations.get(key)
        if loc is None:
            return None
        dev = loc.device
        if dev.exclusive:
            self.cond.wait_for(lambda: not dev.exclusive, timeout=self.reconfigure_timeout_s)
            loc = self.locations.get(key)
            if loc is None or loc.device.exclusive:
                return None
            dev = loc.device
        if dev.state not in READABLE or dev.mm is None:
            return None
        dev.readers[loc.slot] = dev.readers.get(loc.slot, 0) + 1
        dev.io += 1
        return loc

    def unpin_locked(self, loc: Location) -> None:
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
        self.after_io_locked(dev)

    def after_io_locked(self, dev: Device) -> None:
        if dev.io == 0:
            self.cond.notify_all()
            self.maybe_finish_drain_locked(dev)

    def wait_idle_locked(self, dev: Device, timeout: float) -> bool:
        return self.cond.wait_for(lambda: dev.io == 0 and not dev.writing, timeout=timeout)

    # ------------------------------------------------------------------ device lifecycle

    def maybe_finish_drain_locked(self, dev: Device) -> None:
        if dev.state == DRAINING and dev.used == 0 and not dev.writing and dev.io == 0:
            self.finish_removal_locked(dev)
            log.info("dax: drained device %s is empty and removed", dev.path)

    def fail_device(self, dev: Device, exc: BaseException) -> None:
        """Mark `dev` failed (I/O on it raised) and forget every object on it."""
        with self.lock:
            if dev.state in (FAILED, REMOVED):
                return
            log.error("dax: device %s failed: %s", dev.path, exc)
            dev.state = FAILED
            dev.error = f"{type(exc).__name__}: {exc}"
            for key in [k for k in dev.owner if k is not None]:
                if self.locations.get(key) is not None and self.locations[key].device is dev:
                    self.drop_locked(key)
            self.cond.notify_all()

    def evict_all_locked(self, dev: Device) -> int:
        """Drop every object on `dev`; how many."""
        dropped = 0
        for key in list(dev.owner):
            if key is not None and (loc := self.locations.get(key)) is not None and loc.device is dev:
                self.drop_locked(key)
                dropped += 1
        return dropped

    def finish_removal_locked(self, dev: Device) -> None:
        """Wait for in-flight I/O on `dev`, clear what is left of its directory, unmap it."""
        dev.exclusive = True
        try:
            if not self.wait_idle_locked(dev, self.reconfigure_timeout_s):
                raise ConflictError(f"device {dev.path!r} still has I/O in flight; retry the removal")
            dropped = self.evict_all_locked(dev)  # stores that finished while we waited
            if dropped:
                log.warning("dax: %d object(s) written to %s during its removal were dropped", dropped, dev.path)
            dev.state = REMOVED
            close_device(dev)
            dev.free.clear()
            dev.pending_free.clear()
        finally:
            dev.exclusive = False
            self.cond.notify_all()

    # ------------------------------------------------------------------ rebuilding from the records

    def rebuild_locked(self, dev: Device) -> int:
        """Index the valid slots of a freshly opened device; invalid ones become free. Returns
        how many objects were adopted (a key already indexed with a newer record wins)."""
        assert dev.mm is not None
        mm = dev.mm
        found: dict[ObjectKey, tuple[int, int, int]] = {}
        stale: list[int] = []
        free: list[int] = []
        with random_access(mm):
            for slot in range(dev.slots_total):
                self._scan_slot(dev, slot, found, stale, free)
        for slot in stale:
            clear_record(dev, slot, durable=False)
        free.extend(stale)
        heapq.heapify(free)
        dev.free = free
        adopted = 0
        for key, (slot, seq, length) in found.items():
            self._seq = max(self._seq, seq)
            existing = self.locations.get(key)
            if existing is not None and existing.seq >= seq:
                clear_record(dev, slot, durable=False)
                heapq.heappush(dev.free, slot)
                continue
            self.publish_locked(key, dev, slot, length, seq)
            adopted += 1
        if stale:
            log.warning("dax: %d invalid slot(s) on %s freed", len(stale), dev.path)
        return adopted

    def _scan_slot(
        self,
        dev: Device,
        slot: int,
        found: dict[ObjectKey, tuple[int, int, int]],
        stale: list[int],
        free: list[int],
    ) -> None:
        assert dev.mm is not None
        mm = dev.mm
        base = dev.slot_offset(slot)
        if mm[base : base + 4] != RECORD_MAGIC:
            free.append(slot)
            return
        parsed = decode_record(mm[base : base + RECORD_BYTES])
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
