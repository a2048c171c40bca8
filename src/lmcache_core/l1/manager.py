"""L1Manager: the CPU-memory tier's object table over a MemoryPool port.

INTERFACE STUB — the signatures and contracts below are fixed; the bodies are being written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.l1.listener import L1Listener
from lmcache_core.l1.results import OpResult, WriteMode
from lmcache_core.ports import Clock, MemoryHandle, MemoryPool

Reclaimer = Callable[[int], int]
"""`reclaim(bytes_needed) -> bytes_freed`: evicts unlocked objects on the spot when an
allocation does not fit (wired to the eviction controller's policy)."""


class L1Manager:
    """Object table of the L1 tier.

    Each object: a handle into the pool, a write lock and a read lock (each a counter with a
    TTL, so a crashed client cannot pin memory forever), a `temporary` flag (prefetch buffers,
    freed after their last read). Readable = not write-locked. Writable = not locked and not
    temporary. Every batch operation holds the manager's lock once (atomic per call) and returns
    one OpResult per key, in input order. Status counters are incremental: report_status() is
    O(number of currently locked objects), not O(objects).
    """

    def __init__(
        self,
        pool: MemoryPool,
        *,
        clock: Clock,
        write_ttl_seconds: float = 600.0,
        read_ttl_seconds: float = 300.0,
    ) -> None:
        raise NotImplementedError

    # -- wiring ---------------------------------------------------------------------------

    def add_listener(self, listener: L1Listener) -> None:
        """Subscribe to L1 events (see L1Listener for the delivery rules)."""
        raise NotImplementedError

    def set_reclaimer(self, reclaimer: Reclaimer | None) -> None:
        """Install the on-the-spot evictor used when reserve_write cannot allocate."""
        raise NotImplementedError

    @property
    def pool(self) -> MemoryPool:
        raise NotImplementedError

    # -- batch operations -----------------------------------------------------------------

    def reserve_write(
        self,
        keys: Sequence[ObjectKey],
        sizes: Sequence[int],
        mode: WriteMode = WriteMode.NEW,
        *,
        temporary: bool = False,
    ) -> list[tuple[OpResult, MemoryHandle | None]]:
        """Allocate and write-lock objects. Allocation is all-or-nothing for the keys that
        passed the state checks: if they do not all fit (after asking the reclaimer to free
        space), none is allocated and each of them answers OUT_OF_MEMORY. UPDATE of an existing
        object reuses its memory when the size is unchanged."""
        raise NotImplementedError

    def finish_write(self, keys: Sequence[ObjectKey]) -> list[OpResult]:
        """Release the write lock: the object becomes readable; listeners get write_finished."""
        raise NotImplementedError

    def abort_write(self, keys: Sequence[ObjectKey]) -> list[OpResult]:
        """Drop write-locked objects whose write will never complete (never made readable)."""
        raise NotImplementedError

    def finish_write_and_reserve_read(
        self, keys: Sequence[ObjectKey], extra_count: int = 0
    ) -> list[tuple[OpResult, MemoryHandle | None]]:
        """finish_write, then take `1 + extra_count` read locks, atomically."""
        raise NotImplementedError

    def reserve_read(
        self, keys: Sequence[ObjectKey], extra_count: int = 0
    ) -> list[tuple[OpResult, MemoryHandle | None]]:
        """Take `1 + extra_count` read locks (tensor-parallel readers) on readable objects."""
        raise NotImplementedError

    def finish_read(self, keys: Sequence[ObjectKey], count: int = 1) -> list[OpResult]:
        """Release `count` read locks; a temporary object is freed after its last read."""
        raise NotImplementedError

    def delete(self, keys: Sequence[ObjectKey]) -> list[OpResult]:
        """Remove unlocked objects and free their memory; locked ones answer KEY_IS_LOCKED."""
        raise NotImplementedError

    def evict(self, keys: Iterable[ObjectKey], max_bytes: int | None = None) -> tuple[list[ObjectKey], int]:
        """Remove unlocked, non-temporary objects among `keys` (in order) until `max_bytes`
        are freed; skip locked ones. Returns (evicted keys, bytes freed). Reason "evict"."""
        raise NotImplementedError

    def touch(self, keys: Sequence[ObjectKey]) -> list[OpResult]:
        """Mark objects as used (LRU refresh) without locking."""
        raise NotImplementedError

    def clear(self, force: bool = False, *, cache_salt: str | None = None, model_name: str | None = None) -> int:
        """Remove every (matching) object; without `force`, locked objects stay. With `force`,
        locked objects leave the table at once, but their memory is freed only when their locks
        are released or expire, so an in-flight transfer never writes into reused memory.
        Returns the number of objects removed."""
        raise NotImplementedError

    # -- queries --------------------------------------------------------------------------

    def contains(self, key: ObjectKey) -> bool:
        raise NotImplementedError

    def is_readable(self, key: ObjectKey) -> bool:
        raise NotImplementedError

    def get_handle(self, key: ObjectKey) -> MemoryHandle | None:
        """The handle of an object (no lock taken: the caller must already hold one)."""
        raise NotImplementedError

    def view(self, key: ObjectKey) -> memoryview | None:
        """Zero-copy bytes of an object (the caller must hold a lock)."""
        raise NotImplementedError

    def keys(self, *, cache_salt: str | None = None, model_name: str | None = None) -> list[ObjectKey]:
        """A snapshot of the (matching) keys; O(n), for admin use."""
        raise NotImplementedError

    def object_count(self) -> int:
        raise NotImplementedError

    def usage_bytes(self) -> tuple[int, int]:
        """(used, total) bytes of the pool."""
        raise NotImplementedError

    def bytes_by_salt(self) -> dict[str, int]:
        """Object bytes per cache_salt (incremental; O(salts))."""
        raise NotImplementedError

    def expire_locks(self) -> int:
        """Drop expired locks now (also done lazily); frees memory of force-cleared objects
        whose locks are gone. Returns the number of locks expired."""
        raise NotImplementedError

    def report_status(self) -> dict[str, Any]:
        """`is_healthy`, `total_object_count`, `write_locked_count`, `read_locked_count`,
        `temporary_count`, `memory_used_bytes`, `memory_total_bytes`, `memory_usage_ratio`,
        `write_ttl_seconds`, `read_ttl_seconds`, `pending_free_count`, `pool` (the pool's report)."""
        raise NotImplementedError
