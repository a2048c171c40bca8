"""The L1 memory pools: a torch-viewed, slab-allocated arena in a named POSIX shared-memory segment
(`shm_pool`), or arenas on Device-DAX devices (`dax_pool`, imported where used)."""

from lmcache_adapters.memory.shm_pool import (
    SHM_NAME_PREFIX,
    PrefaultMode,
    SharedMemoryPool,
    cleanup_stale_segments,
    create_l1_pool,
    default_segment_name,
    process_start_ticks,
    remove_dead_segment,
    segment_owner_alive,
)
from lmcache_adapters.memory.slabs import PAGE_BYTES

__all__ = [
    "PAGE_BYTES",
    "SHM_NAME_PREFIX",
    "PrefaultMode",
    "SharedMemoryPool",
    "cleanup_stale_segments",
    "create_l1_pool",
    "default_segment_name",
    "process_start_ticks",
    "remove_dead_segment",
    "segment_owner_alive",
]
