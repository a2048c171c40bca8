"""BytearrayMemoryPool: a pure-python MemoryPool backed by a bytearray, for tests and benchmarks."""

from __future__ import annotations

import bisect
import threading
from typing import Any

from lmcache_core.ports import MemoryHandle


class BytearrayMemoryPool:
    """A MemoryPool over a bytearray with slab-like reuse.

    Every allocation takes a slot of `nbytes` rounded up to `alignment` (4096 by default), at an
    offset that is a multiple of `alignment`. Freed slots go to a free list per slot size, so a
    churn of equal-sized objects reuses slots exactly and never fragments. Fresh space is carved
    first-fit from a sorted list of free extents; when neither fits, the per-size free lists are
    returned to the extents (coalescing neighbours) and the search is retried once, so a pool
    whose free space is only fragmented across size classes still serves a request that fits.
    Thread-safe."""

    def __init__(self, capacity_bytes: int, *, alignment: int = 4096) -> None:
        if (
            isinstance(capacity_bytes, bool)
            or not isinstance(capacity_bytes, int)
            or capacity_bytes <= 0
        ):
            raise ValueError(f"capacity_bytes must be a positive integer, got {capacity_bytes!r}")
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {alignment!r}")
        self._capacity = capacity_bytes
        self._alignment = alignment
        self._buf: bytearray | None = bytearray(capacity_bytes)
        self._mv: memoryview | None = memoryview(self._buf)
        self._lock = threading.Lock()
        self._live: dict[int, MemoryHandle] = {}
        self._used = 0
        # Free extents: sorted starts, and start -> length.
        self._ext_starts: list[int] = [0]
        self._ext_len: dict[int, int] = {0: capacity_bytes}
        # Slab free lists: slot size -> offsets of free slots of exactly that size.
        self._free_slots: dict[int, list[int]] = {}
        self._free_slot_count = 0
        self._allocations_total = 0
        self._failed_allocations_total = 0

    # -- MemoryPool -----------------------------------------------------------------------

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used

    @property
    def alignment(self) -> int:
        return self._alignment

    def slot_size(self, nbytes: int) -> int:
        """The slot (size class) an allocation of `nbytes` takes."""
        return -(-nbytes // self._alignment) * self._alignment

    def allocate(self, nbytes: int) -> MemoryHandle | None:
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
            raise ValueError(f"nbytes must be a positive integer, got {nbytes!r}")
        slot = self.slot_size(nbytes)
        with self._lock:
            if self._buf is None:
                return None  # as the real pools: a closed pool has no room, it does not raise
            offset = self._take_slot(slot)
            if offset is None:
                self._failed_allocations_total += 1
                return None
            handle = MemoryHandle(offset=offset, nbytes=nbytes, slot_bytes=slot)
            self._live[offset] = handle
            self._used += slot
            self._allocations_total += 1
            return handle

    def free(self, handle: MemoryHandle) -> None:
        with self._lock:
            if self._buf is None:
                return  # everything was released at close
            live = self._live.get(handle.offset)
            if live is None or live != handle:
                raise ValueError(
                    f"{handle!r} is not allocated from this pool (double free or foreign handle)"
                )
            del self._live[handle.offset]
            self._used -= handle.slot_bytes
            self._free_slots.setdefault(handle.slot_bytes, []).append(handle.offset)
            self._free_slot_count += 1

    def view(self, handle: MemoryHandle) -> memoryview:
        with self._lock:
            if self._mv is None:
                raise ValueError("the memory pool is closed")
            if self._live.get(handle.offset) != handle:
                raise ValueError(f"{handle!r} is not allocated from this pool")
            return self._mv[handle.offset : handle.offset + handle.nbytes]

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            used = self._used
            return {
                "is_healthy": self._buf is not None,
                "kind": "bytearray",
                "capacity_bytes": self._capacity,
                "used_bytes": used,
                "usage_ratio": used / self._capacity,
                "alignment": self._alignment,
                "live_allocations": len(self._live),
                "free_slots": self._free_slot_count,
                "free_extents": len(self._ext_starts),
                "allocations_total": self._allocations_total,
                "failed_allocations_total": self._failed_allocations_total,
                "closed": self._buf is None,
            }

    def close(self) -> None:
        with self._lock:
            if self._mv is not None:
                try:
                    self._mv.release()
                except BufferError:
                    pass  # slices handed out keep the buffer alive until they are dropped
            self._mv = None
            self._buf = None
            self._live.clear()
            self._free_slots.clear()
            self._used = 0

    # -- allocator internals (lock held) --------------------------------------------------

    def _take_slot(self, slot: int) -> int | None:
        free = self._free_slots.get(slot)
        if free:
            self._free_slot_count -= 1
            return free.pop()
        offset = self._carve(slot)
        if offset is None and self._free_slot_count:
            self._flush_free_slots()
            offset = self._carve(slot)
        return offset

    def _carve(self, slot: int) -> int | None:
        for i, start in enumerate(self._ext_starts):
            length = self._ext_len[start]
            if length >= slot:
                del self._ext_len[start]
                if length > slot:
                    self._ext_starts[i] = start + slot
                    self._ext_len[start + slot] = length - slot
                else:
                    del self._ext_starts[i]
                return start
        return None

    def _flush_free_slots(self) -> None:
        for slot, offsets in self._free_slots.items():
            for offset in offsets:
                self._add_extent(offset, slot)
        self._free_slots.clear()
        self._free_slot_count = 0

    def _add_extent(self, start: int, length: int) -> None:
        starts = self._ext_starts
        i = bisect.bisect_left(starts, start)
        if i < len(starts) and starts[i] == start + length:  # merge with the next extent
            length += self._ext_len.pop(starts[i])
            del starts[i]
        if i > 0:
            prev = starts[i - 1]
            if prev + self._ext_len[prev] == start:  # merge into the previous extent
                self._ext_len[prev] += length
                return
        starts.insert(i, start)
        self._ext_len[start] = length
