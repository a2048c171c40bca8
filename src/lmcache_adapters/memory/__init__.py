"""The L1 memory pool: a torch-viewed, slab-allocated arena in a named POSIX shared-memory segment."""

from lmcache_adapters.memory.shm_pool import (
    PAGE_BYTES,
    SHM_NAME_PREFIX,
    PrefaultMode,
    SharedMemoryPool,
    cleanup_stale_segments,
    create_l1_pool,
)

__all__ = [
    "PAGE_BYTES",
    "SHM_NAME_PREFIX",
    "PrefaultMode",
    "SharedMemoryPool",
    "cleanup_stale_segments",
    "create_l1_pool",
]
