"""One mapped dax device: its state, its slot bookkeeping, and opening, formatting, flushing,
remapping and closing it (geometry and mapping come from `lmcache_adapters.memory.devices`)."""

from __future__ import annotations

import heapq
import logging
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from lmcache_adapters.l2.dax.layout import (
    EMPTY_RECORD,
    RECORD_FIXED,
    RECORD_MAGIC,
    SUPERBLOCK_BYTES,
    SUPERBLOCK_USED,
    decode_superblock,
    encode_superblock,
    is_foreign,
    slot_offset,
    slots_in,
)
from lmcache_adapters.l2.dax.sizes import InvalidSizeError
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
from lmcache_core.errors import ConfigError
from lmcache_core.keys import ObjectKey

__all__ = [
    "ACTIVE",
    "DEVICE_STATES",
    "DRAINING",
    "FAILED",
    "IN_CAPACITY",
    "MIGRATING",
    "READABLE",
    "REMOVED",
    "REMOVING",
    "RESIZING",
    "Device",
    "RemapError",
    "check_size",
    "clear_record",
    "close_device",
    "dax_limit",
    "open_slotted_device",
    "persist",
    "random_access",
    "remap",
]

log = logging.getLogger(__name__)

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
READABLE = frozenset({ACTIVE, DRAINING, MIGRATING, RESIZING})
IN_CAPACITY = frozenset({ACTIVE, DRAINING, MIGRATING, RESIZING, REMOVING})


@dataclass(eq=False)
class Device:
    """One mapped device and its slot bookkeeping (guarded by the slot index's lock)."""

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
        return slot_offset(slot, self.slot_bytes)


def persist(dev: Device, offset: int, length: int) -> None:
    """Make `length` bytes at `offset` durable."""
    # On Device-DAX a flush is what makes the bytes durable; a file's page cache survives a
    # process crash, and its write-back is the kernel's business.
    if dev.is_dax and dev.mm is not None:
        page = mmap.PAGESIZE
        start = offset - offset % page
        dev.mm.flush(start, offset + length - start)


def clear_record(dev: Device, slot: int, *, durable: bool = True) -> None:
    """Clear a slot's record (it is free from now on, also after a restart, once `durable`);
    raises OSError / ValueError when the device cannot be written."""
    base = dev.slot_offset(slot)
    assert dev.mm is not None
    dev.mm[base : base + RECORD_FIXED] = EMPTY_RECORD
    if durable:
        persist(dev, base, RECORD_FIXED)


@contextmanager
def random_access(mm: mmap.mmap) -> Iterator[None]:
    """Advise random access while scanning slot records."""
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


def dax_limit(dev: Device) -> int | None:
    """The byte size of the Device-DAX device behind `dev` (None for a file)."""
    if not dev.is_dax:
        return None
    return dax_geometry(dev.path)[0]


def check_size(
    path: str, size: int, slot_bytes: int, is_dax: bool, dax_size: int | None, align: int = DEFAULT_DAX_ALIGN
) -> int:
    """The number of slots a device of `size` bytes holds; InvalidSizeError when none fits or
    the size does not suit the Device-DAX device."""
    slots = slots_in(size, slot_bytes)
    if slots < 1:
        raise InvalidSizeError(f"size {size} of {path!r} does not fit one slot: at least {SUPERBLOCK_BYTES + slot_bytes} bytes")
    if is_dax:
        if size % align:
            raise InvalidSizeError(f"size {size} of {path!r} must be a multiple of the device alignment {align}")
        if dax_size is not None and size > dax_size:
            raise InvalidSizeError(f"size {size} of {path!r} exceeds the device's {dax_size} bytes")
    return slots


def open_slotted_device(path: str, size: int | None, slot_bytes: int, *, preallocate: bool, where: str) -> Device:
    """Open and map a device (a missing file is created) and check or write its superblock;
    ConfigError naming `where` when it cannot serve `slot_bytes` slots."""
    info = inspect_device(path, size, where=where)
    path = info.path
    slots = check_size(path, info.size, slot_bytes, info.is_dax, info.dax_size, info.align)
    fd = open_device(info, where=where, create=True)
    try:
        if not info.is_dax:
            _check_foreign_file(fd, path, info.exists, where)
            extend_file(fd, path, info.size, preallocate=preallocate)
        mm = map_device(fd, path, info.size, where=where)
    except BaseException:
        os.close(fd)
        raise
    dev = Device(
        path=path,
        size=info.size,
        is_dax=info.is_dax,
        align=info.align,
        fd=fd,
        mm=mm,
        identity=device_identity(os.fstat(fd)),
        slots_total=slots,
        slot_bytes=slot_bytes,
        owner=[None] * slots,
    )
    try:
        _check_superblock(dev, where)
    except BaseException:
        close_device(dev)
        raise
    return dev


def _check_foreign_file(fd: int, path: str, existed: bool, where: str) -> None:
    if not existed or os.fstat(fd).st_size == 0:
        return
    if is_foreign(os.pread(fd, SUPERBLOCK_USED, 0)):
        raise ConfigError(f"{where}: {path!r} exists and is not an lmcache dax device file; refusing to overwrite it")


def _check_superblock(dev: Device, where: str) -> None:
    assert dev.mm is not None
    found = decode_superblock(dev.mm[:SUPERBLOCK_USED])
    if found is not None:
        if not found.supported:
            raise ConfigError(f"{where}: {dev.path!r} has an unsupported dax layout (version {found.version})")
        if found.slot_bytes != dev.slot_bytes:
            raise ConfigError(
                f"{where}: {dev.path!r} was formatted with slot_bytes={found.slot_bytes}, this adapter uses "
                f"slot_bytes={dev.slot_bytes}; configure the same slot_bytes or wipe the device"
            )
        return
    # A fresh device: format it. Slot records written by another layout cannot validate.
    dev.mm[:SUPERBLOCK_USED] = encode_superblock(dev.slot_bytes)
    persist(dev, 0, SUPERBLOCK_USED)


class RemapError(Exception):
    """Mapping a device anew failed (its old mapping is gone: the device is unusable); the
    cause is the OSError / ValueError."""


def remap(dev: Device, size: int, new_slots: int) -> None:
    """Map `dev` anew at `size` bytes / `new_slots` slots (the caller holds it idle and
    exclusive). Grown slots join the free list (stale records from an earlier life cleared);
    dropped ones leave it, and a file shrinks. RemapError when the new mapping fails."""
    old_slots = dev.slots_total
    assert dev.mm is not None
    dev.mm.flush()
    dev.mm.close()
    dev.mm = None
    try:
        dev.mm = mmap.mmap(dev.fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as exc:
        raise RemapError(str(exc)) from exc
    dev.size = size
    dev.slots_total = new_slots
    if new_slots > old_slots:
        dev.owner.extend([None] * (new_slots - old_slots))
        with random_access(dev.mm):
            for slot in range(old_slots, new_slots):
                _clear_stale_record(dev, slot)
                heapq.heappush(dev.free, slot)
    else:
        del dev.owner[new_slots:]
        # slots freed by readers that finished during the shrink may have come back
        dev.free = [s for s in dev.free if s < new_slots]
        heapq.heapify(dev.free)
        dev.pending_free = {s for s in dev.pending_free if s < new_slots}
        if not dev.is_dax:
            os.ftruncate(dev.fd, size)


def _clear_stale_record(dev: Device, slot: int) -> None:
    # Grown space may hold records from an earlier life of the device; reading first keeps a
    # sparse file sparse.
    assert dev.mm is not None
    base = dev.slot_offset(slot)
    if dev.mm[base : base + 4] == RECORD_MAGIC:
        dev.mm[base : base + RECORD_FIXED] = EMPTY_RECORD


def close_device(dev: Device) -> None:
    """Flush, unmap and close `dev` (a failure to unmap is logged: a live view keeps the mapping)."""
    error = unmap_device(dev.mm, dev.fd)
    if error is not None:
        log.warning("dax: unmapping %s failed: %s", dev.path, error)
    dev.mm = None
    dev.fd = -1
