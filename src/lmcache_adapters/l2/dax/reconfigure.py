"""The device state machine: add, remove (migrate / evict / drain) and resize devices at run
time, migrating objects between slots while stores and loads go on."""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Callable
from typing import Any

from lmcache_adapters.l2.dax.device import (
    ACTIVE,
    DRAINING,
    FAILED,
    MIGRATING,
    REMOVED,
    REMOVING,
    RESIZING,
    Device,
    RemapError,
    check_size,
    close_device,
    dax_limit,
    open_slotted_device,
    remap,
)
from lmcache_adapters.l2.dax.index import SlotIndex
from lmcache_adapters.l2.dax.reports import device_reconfigure_locked
from lmcache_adapters.l2.dax.requests import (
    REMOVE_MODES,
    RESIZE_MODES,
    SUPPORTED_OPERATIONS,
    AddDevice,
    ReconfigureRequest,
    RemoveDevice,
    StatusRequest,
)
from lmcache_adapters.l2.dax.sizes import parse_size
from lmcache_adapters.l2.dax.slot_io import DEVICE_ERRORS, copy_slot
from lmcache_adapters.l2.instruments import L2Instruments
from lmcache_adapters.l2.integrity import IntegrityError
from lmcache_adapters.memory.devices import extend_file
from lmcache_core.errors import (
    ConfigError,
    ConflictError,
    ForbiddenOperationError,
    NotInitializedError,
)
from lmcache_core.keys import ObjectKey

__all__ = ["Reconfigurer"]

log = logging.getLogger(__name__)

_Chooser = Callable[[Device], tuple[Device, int] | None]


class Reconfigurer:
    """Runs add / remove / resize over a slot index; each operation returns its JSON result.

    Raises ConfigError for bad arguments, NotFoundError for an unknown device, ConflictError
    when the device's state or contents forbid it now, ForbiddenOperationError for removing the
    last active device."""

    def __init__(self, index: SlotIndex, *, name: str, preallocate: bool, instruments: L2Instruments) -> None:
        self.index = index
        self.name = name
        self.preallocate = preallocate
        self._instruments = instruments

    def apply(self, request: ReconfigureRequest) -> dict[str, Any]:
        """Run one parsed request."""
        if isinstance(request, StatusRequest):
            return self.status()
        if isinstance(request, AddDevice):
            return self.add_device(request.path, request.size)
        if isinstance(request, RemoveDevice):
            return self.remove_device(request.path, mode=request.mode, force=request.force)
        return self.resize_device(request.path, request.size, mode=request.mode, force=request.force)

    def status(self) -> dict[str, Any]:
        """`{"backend": "dax", "supported_operations": [...], "status": {...}}`."""
        index = self.index
        with index.lock:
            devices = [{"index": i, **device_reconfigure_locked(index, d)} for i, d in enumerate(index.devices)]
            return {
                "backend": "dax",
                "supported_operations": list(SUPPORTED_OPERATIONS),
                "status": {
                    "slot_bytes": index.slot_bytes,
                    "placement": index.placement,
                    "total_capacity_bytes": index.capacity_bytes_locked(),
                    "total_used_bytes": index.used_bytes_locked(),
                    "num_devices": len(devices),
                    "devices": devices,
                },
            }

    # ------------------------------------------------------------------ add

    def add_device(self, path: str, size: int | None) -> dict[str, Any]:
        """Map one more device and make it active; objects already on it (from an earlier life)
        are adopted. A path (or the same file/device under another path) already configured is a
        ConflictError."""
        index = self.index
        index.check_open(self.name)
        path = os.path.abspath(path)
        with index.lock:
            for dev in index.devices:
                if dev.state != REMOVED and dev.path == path:
                    raise ConflictError(f"device {path!r} is already configured (state {dev.state})")
        dev = open_slotted_device(path, size, index.slot_bytes, preallocate=self.preallocate, where="add body")
        with index.lock:
            clash = next((d for d in index.devices if d.state != REMOVED and d.identity == dev.identity), None)
            if clash is not None:
                close_device(dev)
                raise ConflictError(f"device {path!r} is the same device as configured {clash.path!r}")
            if index.closed:
                close_device(dev)
                raise NotInitializedError(f"L2 adapter {self.name!r} (dax) is closed")
            # a removed entry for the same path is history the new one replaces
            index.devices = [d for d in index.devices if not (d.state == REMOVED and d.path == path)]
            index.devices.append(dev)
            recovered = index.rebuild_locked(dev)
            index.cond.notify_all()
            log.info("dax: added device %s (%d bytes, %d slots, %d objects adopted)", path, dev.size, dev.slots_total, recovered)
            return {
                "status": "ok",
                "operation": "add",
                "device": {"index": index.devices.index(dev), **device_reconfigure_locked(index, dev)},
                "recovered_keys": recovered,
            }

    # ------------------------------------------------------------------ remove

    def remove_device(self, path: str, *, mode: str = "migrate", force: bool = False) -> dict[str, Any]:
        """Take a device out of service.

        - migrate: copy its objects to other active devices, then unmap it (no room left:
          ConflictError, or with `force` the rest is dropped);
        - evict: drop its objects, then unmap it;
        - drain: stop new writes; it is removed once empty (or at once with `force`).
        Locked objects block migrate/evict without `force` (ConflictError); removing the last
        active device is refused (ForbiddenOperationError)."""
        index = self.index
        index.check_open(self.name)
        if mode not in REMOVE_MODES:
            raise ConfigError(f"mode must be one of {', '.join(REMOVE_MODES)}, got {mode!r}")
        with index.lock:
            dev = index.find_locked(path)
            position = index.devices.index(dev)
            if dev.state in (MIGRATING, RESIZING, REMOVING):
                raise ConflictError(f"device {dev.path!r} is busy ({dev.state}); retry when it is done")
            if dev.state != FAILED and not any(d is not dev and d.state == ACTIVE for d in index.devices):
                raise ForbiddenOperationError(
                    f"cannot remove {dev.path!r}: it is the last active device of this adapter "
                    "(add another device first)"
                )
            if dev.state == FAILED:
                mode = "evict"  # nothing on a failed device can be read back
            locked = index.locked_count_locked(dev)
            if mode == "drain" and not force:
                if dev.state == ACTIVE:
                    dev.state = DRAINING
                    log.info("dax: draining device %s (%d objects)", dev.path, dev.used)
                index.maybe_finish_drain_locked(dev)
                return {
                    "status": "ok",
                    "operation": "drain",
                    "device_path": dev.path,
                    "index": position,
                    "state": dev.state,
                    "remaining_keys": dev.used,
                }
            if locked and not force:
                raise ConflictError(
                    f"device {dev.path!r} holds {locked} locked object(s); retry later or pass force=true"
                )
            previous = dev.state
            dev.state = MIGRATING if mode == "migrate" else REMOVING
            index.cond.notify_all()
        moved = moved_bytes = 0
        try:
            if mode == "migrate":
                moved, moved_bytes = self._migrate_all(dev, force=force)
            with index.lock:
                dev.state = REMOVING
                deleted = index.evict_all_locked(dev)
                index.finish_removal_locked(dev)
        except BaseException:
            with index.lock:
                if dev.state in (MIGRATING, REMOVING):
                    dev.state = previous
                    index.cond.notify_all()
            raise
        log.info("dax: removed device %s (mode %s: %d moved, %d dropped)", dev.path, mode, moved, deleted)
        return {
            "status": "ok",
            "operation": "remove",
            "mode": mode,
            "device_path": dev.path,
            "index": position,
            "moved_keys": moved,
            "moved_bytes": moved_bytes,
            "deleted_keys": deleted,
            "source_slots_freed": moved + deleted,
            "state": dev.state,
        }

    def _migrate_all(self, dev: Device, *, force: bool) -> tuple[int, int]:
        """Move every object of `dev` (state MIGRATING) to other active devices. Loops until the
        device holds nothing and no store into it is in flight, so an object acknowledged during
        the migration is never left behind."""
        index = self.index
        moved = moved_bytes = 0
        rounds = 0
        while True:
            rounds += 1
            with index.lock:
                keys = [k for k in dev.owner if k is not None]
                if not keys:
                    if not dev.writing:
                        return moved, moved_bytes
                    if not index.cond.wait_for(lambda: not dev.writing, timeout=index.reconfigure_timeout_s):
                        raise ConflictError(f"stores into {dev.path!r} did not finish; retry the removal")
                    continue
            if rounds > 1000:  # pragma: no cover - a device refilling forever is a bug, not a wait
                raise ConflictError(f"migration of {dev.path!r} did not converge")
            for key in keys:
                outcome, nbytes = self._relocate(key, dev, index.other_active_slot_locked)
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

    def _relocate(self, key: ObjectKey, source: Device, choose: _Chooser) -> tuple[str, int]:
        """Copy one object out of `source` into a slot from `choose` (called with the lock held)
        and switch the index to it. Returns ("moved" | "gone" | "corrupt" | "no_room", payload bytes)."""
        index = self.index
        with index.lock:
            loc = index.locations.get(key)
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
            seq = index.next_seq_locked()
        outcome = "moved"
        try:
            copy_slot(source, loc.slot, dest, dslot, key.to_storage_name().encode("utf-8"), seq, loc.length)
        except IntegrityError as exc:
            log.warning("dax: %r on %s failed verification during migration (%s); dropped", key, source.path, exc)
            outcome = "corrupt"
        except DEVICE_ERRORS as exc:
            index.fail_device(dest, exc)
            outcome = "failed"
        with index.lock:
            dest.writing.discard(dslot)
            dest.io -= 1
            index.unpin_locked(loc)
            if outcome == "moved" and index.locations.get(key) is loc and dest.state != FAILED:
                index.drop_locked(key, keep_lock=True)
                index.publish_locked(key, dest, dslot, loc.length, seq)
                index.after_io_locked(dest)
                return "moved", loc.length
            if dest.state != FAILED:
                index.release_slot_locked(dest, dslot)
            index.after_io_locked(dest)
            if outcome == "corrupt":
                index.corrupt_locked(key, loc)
        if outcome == "corrupt":
            self._instruments.checksum_failure()
            return "corrupt", 0
        if outcome == "failed":
            return "no_room", 0
        return "gone", 0

    # ------------------------------------------------------------------ resize

    def resize_device(self, path: str, size: int, *, mode: str = "migrate", force: bool = False) -> dict[str, Any]:
        """Grow or shrink a device's mapped size.

        Growing adds free slots. Shrinking drops the tail slots: free ones go at once; objects in
        the tail are relocated (mode migrate, to free slots below the new end or on other active
        devices) or refused (mode evict) — ConflictError unless `force`, which drops what cannot
        stay. Locked objects in the tail block without `force`."""
        index = self.index
        index.check_open(self.name)
        if mode not in RESIZE_MODES:
            raise ConfigError(f"mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
        size = parse_size(size, "size")
        with index.lock:
            dev = index.find_locked(path)
            position = index.devices.index(dev)
            if dev.state not in (ACTIVE, DRAINING):
                raise ConflictError(f"device {dev.path!r} cannot be resized while {dev.state}")
            new_slots = check_size(dev.path, size, index.slot_bytes, dev.is_dax, dax_limit(dev), dev.align)
            old_size, old_slots = dev.size, dev.slots_total
            if size == old_size:
                return self._resize_result(dev, position, old_size, 0, 0)
            previous = dev.state
            dev.state = RESIZING
        moved = evicted = 0
        try:
            if new_slots < old_slots:
                moved, evicted = self._clear_tail(dev, new_slots, mode=mode, force=force)
            elif not dev.is_dax:
                extend_file(dev.fd, dev.path, size, preallocate=self.preallocate)
            with index.lock:
                self._remap_locked(dev, size, new_slots)
                dev.state = previous
                index.cond.notify_all()
        except BaseException:
            with index.lock:
                if dev.state == RESIZING:
                    if new_slots < dev.slots_total:  # a refused shrink gives its tail back
                        _restore_tail_free_locked(dev, new_slots)
                    dev.state = previous
                    index.cond.notify_all()
            raise
        log.info("dax: resized device %s from %d to %d bytes", dev.path, old_size, size)
        with index.lock:
            return self._resize_result(dev, position, old_size, moved, evicted)

    def _resize_result(self, dev: Device, position: int, old_size: int, moved: int, evicted: int) -> dict[str, Any]:
        return {
            "status": "ok",
            "operation": "resize",
            "device_path": dev.path,
            "index": position,
            "old_size_bytes": old_size,
            "new_size_bytes": dev.size,
            "slots_total": dev.slots_total,
            "moved_keys": moved,
            "deleted_keys": evicted,
            "state": dev.state,
        }

    def _clear_tail(self, dev: Device, new_slots: int, *, mode: str, force: bool) -> tuple[int, int]:
        """Empty slots >= new_slots of `dev` (state RESIZING) and take them out of the free list."""
        index = self.index
        with index.lock:
            if not index.cond.wait_for(
                lambda: not any(s >= new_slots for s in dev.writing), timeout=index.reconfigure_timeout_s
            ):
                raise ConflictError(f"stores into the tail of {dev.path!r} did not finish; retry the resize")
            dev.free = [s for s in dev.free if s < new_slots]
            heapq.heapify(dev.free)
            tail = [k for k in dev.owner[new_slots:] if k is not None]
            locked = sum(1 for k in tail if index.key_locks.is_locked(k))
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

            def choose(source: Device) -> tuple[Device, int] | None:
                if source.free:  # the free list now holds only slots below the new end
                    return source, heapq.heappop(source.free)
                return index.other_active_slot_locked(source)

            for key in tail:
                outcome, _ = self._relocate(key, dev, choose)
                if outcome == "moved":
                    moved += 1
                elif outcome == "no_room" and not force:
                    raise ConflictError(
                        f"no free slot to relocate the tail of {dev.path!r} ({moved} object(s) moved so far); "
                        "free space or pass force=true to evict the rest"
                    )
        with index.lock:
            for key in [k for k in dev.owner[new_slots:] if k is not None]:
                index.drop_locked(key)
                evicted += 1
        return moved, evicted

    def _remap_locked(self, dev: Device, size: int, new_slots: int) -> None:
        index = self.index
        dev.exclusive = True
        try:
            if not index.wait_idle_locked(dev, index.reconfigure_timeout_s):
                raise ConflictError(f"device {dev.path!r} still has I/O in flight; retry the resize")
            try:
                remap(dev, size, new_slots)
            except RemapError as exc:
                cause = exc.__cause__ or exc
                index.fail_device(dev, cause)
                raise ConflictError(f"remapping {dev.path!r} to {size} bytes failed: {cause}") from None
        finally:
            dev.exclusive = False
            index.cond.notify_all()


def _restore_tail_free_locked(dev: Device, new_slots: int) -> None:
    busy = dev.writing | dev.pending_free | set(dev.free)
    for slot in range(new_slots, dev.slots_total):
        if dev.owner[slot] is None and slot not in busy:
            heapq.heappush(dev.free, slot)
