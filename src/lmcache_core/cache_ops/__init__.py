"""Operator operations on the cache, one implementation each behind both generations of admin
routes (LMCache 0.5.0's `/l2`, `/clear-cache`, `/kvcache/check`, `/reconfigure/<backend>/...`
and 0.5.6's `/cache/*`, `/config/adapters`, `/reconfigure/<backend>/l2/...`)."""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_core.cache_ops.checksums import ChecksumService
from lmcache_core.cache_ops.clear import ClearService
from lmcache_core.cache_ops.objects import ObjectService
from lmcache_core.cache_ops.prefetch import WarmPrefetchService
from lmcache_core.cache_ops.reconfigure import ReconfigureService
from lmcache_core.cache_ops.tiers import Tier
from lmcache_core.engine import CacheEngine

__all__ = [
    "CacheOperations",
    "ChecksumService",
    "ClearService",
    "ObjectService",
    "ReconfigureService",
    "Tier",
    "WarmPrefetchService",
]


@dataclass(frozen=True)
class CacheOperations:
    """The operation services of one engine (what the admin routes receive)."""

    objects: ObjectService
    clear: ClearService
    checksums: ChecksumService
    prefetch: WarmPrefetchService
    reconfigure: ReconfigureService

    @classmethod
    def for_engine(cls, engine: CacheEngine) -> CacheOperations:
        storage = engine.storage
        return cls(
            objects=ObjectService(storage),
            clear=ClearService(storage),
            checksums=ChecksumService(engine.kv_caches),
            prefetch=WarmPrefetchService(engine.hasher, storage, engine.kv_caches, clock=engine.clock),
            reconfigure=ReconfigureService(storage),
        )

    def close(self) -> None:
        """Forget pending warm-prefetch jobs (their loads finish on their own)."""
        self.prefetch.close()
