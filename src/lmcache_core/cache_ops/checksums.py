"""ChecksumService: MD5 checksums over blocks of a registered KV cache (round-trip checks of
stores and retrieves, as `lmcache bench server` does)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lmcache_core.errors import InvalidRequestError, NotFoundError
from lmcache_core.kv_caches import Checksums, KVCacheRegistry

MAX_BLOCK_IDS = 10_000_000
"""Most block ids one check may name (bounds the work of one admin call)."""


@dataclass(frozen=True)
class ChecksumResult:
    """The digests of one check: one per chunk of `chunk_size` blocks (or per layer)."""

    chunk_size: int
    num_chunks: int
    checksums: Checksums
    layerwise: bool


class ChecksumService:
    """Checks blocks of the KV caches engines registered on the data path."""

    def __init__(self, kv_caches: KVCacheRegistry) -> None:
        self._kv_caches = kv_caches

    def compute(
        self, instance_id: int, block_ids: Sequence[int], chunk_size: int, *, layerwise: bool = False
    ) -> ChecksumResult:
        """MD5 per chunk of `chunk_size` blocks of instance `instance_id`'s KV cache. Raises
        NotFoundError for an instance with no server-driven registration, InvalidRequestError for
        no block ids, a chunk size < 1 or a block id outside the cache, NotSupportedError for a KV
        layout that cannot be checked."""
        cache = self._kv_caches.kv_cache(instance_id)
        if cache is None:
            raise NotFoundError(f"instance_id {instance_id} not registered")
        if not block_ids:
            raise InvalidRequestError("block_ids is required")
        if chunk_size <= 0:
            raise InvalidRequestError("chunk_size must be positive")
        if len(block_ids) > MAX_BLOCK_IDS:
            raise InvalidRequestError(f"too many block_ids (limit={MAX_BLOCK_IDS}, got={len(block_ids)})")
        if any(b < 0 for b in block_ids):
            raise InvalidRequestError("block_ids must be >= 0")
        sums = cache.checksums(list(block_ids), chunk_size, layerwise=layerwise)
        return ChecksumResult(chunk_size, -(-len(block_ids) // chunk_size), sums, layerwise)
