"""SlabAllocator: the L1 pools' allocator, slab spans per size class over one byte range."""

from __future__ import annotations

import math
from typing import Any

from lmcache_core.errors import ConfigError
from lmcache_core.ports import MemoryHandle

PAGE_BYTES = 4096
DEFAULT_SLAB_BYTES = 32 << 20
# A small range still gets this many slabs, so a few size classes can coexist in it.
MIN_SLABS_FOR_DEFAULT = 16
# A span (the unit one size class owns) may grow to this many slabs to cut tail waste.
_MAX_EXTRA_SPAN_SLABS = 8


def round_up(value: int, multiple: int) -> int:
    """`value` rounded up to a multiple of `multiple`."""
    return -(-value // multiple) * multiple


def check_nbytes(nbytes: object) -> int:
    """`nbytes` when it is a positive int (not a bool); ValueError otherwise."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes <= 0:
        raise ValueError(f"nbytes must be a positive int, got {nbytes!r}")
    return nbytes


def slab_size_for(capacity_bytes: int, slab_bytes: int | None = None) -> int:
    """The slab size for a range of `capacity_bytes`: `slab_bytes` (default 32 MiB, or a 16th
    of a small range) rounded down to whole pages, at least one page, at most the range."""
    if slab_bytes is None:
        slab_bytes = min(DEFAULT_SLAB_BYTES, capacity_bytes // MIN_SLABS_FOR_DEFAULT)
    slab_bytes = max(PAGE_BYTES, slab_bytes // PAGE_BYTES * PAGE_BYTES)
    return min(slab_bytes, capacity_bytes // PAGE_BYTES * PAGE_BYTES)


class SlabAllocator:
    """Slots of one byte range `[base, base + capacity)`, by size class, in spans of slabs.

    The range is cut into slabs of `slab_bytes`. A size class (the request rounded up to 4096)
    owns spans of one or more contiguous slabs and hands out slots from them; a span whose slots
    are all free goes back to the free slabs, so churn of equal-sized objects never fragments and
    another size class can reuse the space. Offsets of the handles are `base` + the offset in
    the range (pools with several ranges give each its own base). Not thread-safe: the pool
    that owns it holds its lock around every call."""

    def __init__(self, capacity_bytes: int, *, slab_bytes: int | None = None, base: int = 0) -> None:
        if capacity_bytes < PAGE_BYTES:
            raise ConfigError(f"an L1 arena must hold at least {PAGE_BYTES} bytes, got {capacity_bytes}")
        self.slab_bytes = slab_size_for(capacity_bytes, slab_bytes)
        self.n_slabs = capacity_bytes // self.slab_bytes
        # Whole slabs only: what can be handed out.
        self.capacity_bytes = self.n_slabs * self.slab_bytes
        self.base = base
        self.reset()

    def reset(self) -> None:
        """Forget every allocation (the range is closed or emptied)."""
        n = self.n_slabs
        # Free single slabs as a stack, lowest address on top: early objects land in the
        # pre-faulted start of the range, and recently freed (warm) slabs are reused first.
        self._free_stack: list[int] = list(range(n - 1, -1, -1))
        self._in_stack = [True] * n
        self._slab_head = [-1] * n  # span head of each slab, -1 when free
        self.free_slabs = n
        # Per span (indexed by head slab).
        self._span_slot = [0] * n
        self._span_len = [0] * n
        self._span_cap = [0] * n
        self._span_live = [0] * n
        self._span_bump = [0] * n
        self._span_free: list[list[int]] = [[] for _ in range(n)]
        self._span_prev = [-1] * n
        self._span_next = [-1] * n
        # Per size class: head of its doubly linked list of spans with a free slot.
        self._partial_head: dict[int, int] = {}
        self._class_spans: dict[int, int] = {}
        self._class_span_len: dict[int, int] = {}
        self._live: dict[int, MemoryHandle] = {}
        self.used_bytes = 0

    # ------------------------------------------------------------------ queries

    @property
    def objects(self) -> int:
        """Live allocations."""
        return len(self._live)

    @property
    def size_classes(self) -> int:
        """Size classes holding at least one span."""
        return len(self._class_spans)

    def is_live(self, handle: MemoryHandle) -> bool:
        """Whether `handle` is a live allocation of this allocator (exactly as returned)."""
        return self._live.get(handle.offset) == handle

    def contains(self, offset: int) -> bool:
        """Whether `offset` lies in this allocator's range."""
        return self.base <= offset < self.base + self.capacity_bytes

    def report(self) -> dict[str, Any]:
        """Allocator fields of a status report."""
        return {
            "slab_bytes": self.slab_bytes,
            "slabs_total": self.n_slabs,
            "slabs_free": self.free_slabs,
            "size_classes": len(self._class_spans),
            "objects": len(self._live),
        }

    # ------------------------------------------------------------------ allocate / free

    def allocate(self, nbytes: int) -> MemoryHandle | None:
        """Reserve `nbytes` (> 0) at a 4096-aligned offset; None when no room is left."""
        slot = round_up(nbytes, PAGE_BYTES)
        if slot > self.capacity_bytes:
            return None
        head = self._partial_head.get(slot, -1)
        if head == -1:
            k = self._span_len_for(slot)
            head = self._take_slabs(k)
            if head == -1:
                return None
            for s in range(head, head + k):
                self._slab_head[s] = head
            self.free_slabs -= k
            self._span_slot[head] = slot
            self._span_len[head] = k
            self._span_cap[head] = k * self.slab_bytes // slot
            self._span_live[head] = 0
            self._span_bump[head] = 0
            self._span_free[head] = []
            self._class_spans[slot] = self._class_spans.get(slot, 0) + 1
            self._link(head, slot)
        free_slots = self._span_free[head]
        if free_slots:
            offset = free_slots.pop()
        else:
            offset = head * self.slab_bytes + self._span_bump[head] * slot
            self._span_bump[head] += 1
        self._span_live[head] += 1
        if self._span_live[head] == self._span_cap[head]:
            self._unlink(head, slot)
        handle = MemoryHandle(offset=self.base + offset, nbytes=nbytes, slot_bytes=slot)
        self._live[handle.offset] = handle
        self.used_bytes += slot
        return handle

    def free(self, handle: MemoryHandle, owner: str = "this L1 pool") -> None:
        """Return a handle from `allocate`; a double or foreign free raises ValueError."""
        if self._live.get(handle.offset) != handle:
            raise ValueError(f"{handle} is not a live allocation of {owner}")
        del self._live[handle.offset]
        self.used_bytes -= handle.slot_bytes
        slot = handle.slot_bytes
        local = handle.offset - self.base
        head = self._slab_head[local // self.slab_bytes]
        was_full = self._span_live[head] == self._span_cap[head]
        self._span_live[head] -= 1
        if self._span_live[head] == 0:
            if not was_full:
                self._unlink(head, slot)
            self._release_span(head, slot)
        else:
            self._span_free[head].append(local)
            if was_full:
                self._link(head, slot)

    # ------------------------------------------------------------------ spans

    def _span_len_for(self, slot: int) -> int:
        cached = self._class_span_len.get(slot)
        if cached is not None:
            return cached
        base = math.ceil(slot / self.slab_bytes)
        best, best_waste = base, 1.0
        for k in range(base, min(base + _MAX_EXTRA_SPAN_SLABS, self.n_slabs) + 1):
            span = k * self.slab_bytes
            waste = (span % slot) / span
            if waste < best_waste:
                best, best_waste = k, waste
            if waste <= 0.125:
                break
        self._class_span_len[slot] = best
        return best

    def _take_slabs(self, k: int) -> int:
        """Reserve `k` contiguous free slabs; the first index, or -1."""
        if k > self.free_slabs:
            return -1
        if k == 1:
            while self._free_stack:
                s = self._free_stack.pop()
                self._in_stack[s] = False
                if self._slab_head[s] == -1:  # entries of slabs taken by a run are stale
                    return s
            return -1
        # Runs are rare (objects near or above a slab): a scan from the top keeps them away
        # from the single slabs handed out from the bottom.
        run = 0
        heads = self._slab_head
        for s in range(self.n_slabs - 1, -1, -1):
            run = run + 1 if heads[s] == -1 else 0
            if run == k:
                return s
        return -1

    def _link(self, head: int, slot: int) -> None:
        first = self._partial_head.get(slot, -1)
        self._span_prev[head] = -1
        self._span_next[head] = first
        if first != -1:
            self._span_prev[first] = head
        self._partial_head[slot] = head

    def _unlink(self, head: int, slot: int) -> None:
        prev, nxt = self._span_prev[head], self._span_next[head]
        if prev != -1:
            self._span_next[prev] = nxt
        else:
            if nxt == -1:
                del self._partial_head[slot]
            else:
                self._partial_head[slot] = nxt
        if nxt != -1:
            self._span_prev[nxt] = prev
        self._span_prev[head] = self._span_next[head] = -1

    def _release_span(self, head: int, slot: int) -> None:
        k = self._span_len[head]
        self._span_free[head] = []
        remaining = self._class_spans[slot] - 1
        if remaining:
            self._class_spans[slot] = remaining
        else:
            del self._class_spans[slot]
        # Push in reverse so the lowest slab of the span is reused first.
        for s in range(head + k - 1, head - 1, -1):
            self._slab_head[s] = -1
            if not self._in_stack[s]:
                self._in_stack[s] = True
                self._free_stack.append(s)
        self.free_slabs += k
