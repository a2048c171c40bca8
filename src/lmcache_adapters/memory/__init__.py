"""The L1 memory pool: a torch-viewed, slab-allocated arena in a named POSIX shared-memory segment."""

from lmcache_adapters.memory.shm_pool import (
    PAGE_BYTES,
    SHM_NAME_PREFIX,
    PrefaultMode,
    SharedMemoryPool,
    cleanup_stale_segments,
    create_l1_pool,
    process_start_ticks,
    segment_owner_alive,
)

__all__ = [
    "PAGE_BYTES",
    "SHM_NAME_PREFIX",
    "PrefaultMode",
    "SharedMemoryPool",
    "cleanup_stale_segments",
    "create_l1_pool",
    "process_start_ticks",
    "segment_owner_alive",
]
