"""The KV caches engines registered on the data path, seen from the admin operations: the L1
object size of a (model, world size) and per-instance block checksums.

The data-path frontends own the registrations; each adds itself as a `KVCacheSource` of the
engine's `KVCacheRegistry`, so the admin routes never reach into a frontend by name."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

Checksums = list[str] | dict[str, list[str]]
"""MD5 hex digests, one per chunk; or per layer (`{"layer_<i>": [...]}`) when layerwise."""


@runtime_checkable
class RegisteredKVCache(Protocol):
    """One engine worker's registered KV tensors (server-driven registrations only)."""

    def checksums(self, block_ids: Sequence[int], chunk_blocks: int, *, layerwise: bool) -> Checksums:
        """MD5 of the blocks `block_ids`, `chunk_blocks` blocks per chunk, every layer's blocks
        of a chunk hashed together (or per layer with `layerwise`). Raises NotSupportedError for
        a KV layout it cannot read, InvalidRequestError for a block id outside the cache."""
        ...


@runtime_checkable
class KVCacheSource(Protocol):
    """A data-path frontend's registrations."""

    def object_size(self, model_name: str, world_size: int) -> int | None:
        """Bytes of one L1 object (one chunk of one rank) of the model at this world size, or
        None when no worker of it is registered."""
        ...

    def kv_cache(self, instance_id: int) -> RegisteredKVCache | None:
        """The server-driven KV cache registered under `instance_id`, or None."""
        ...


class KVCacheRegistry:
    """Every KVCacheSource of one engine; lookups ask them in the order they were added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[KVCacheSource] = []

    def add_source(self, source: KVCacheSource) -> None:
        with self._lock:
            if source not in self._sources:
                self._sources.append(source)

    def remove_source(self, source: KVCacheSource) -> None:
        with self._lock:
            if source in self._sources:
                self._sources.remove(source)

    def _snapshot(self) -> list[KVCacheSource]:
        with self._lock:
            return list(self._sources)

    def object_size(self, model_name: str, world_size: int) -> int | None:
        for source in self._snapshot():
            size = source.object_size(model_name, world_size)
            if size is not None:
                return size
        return None

    def kv_cache(self, instance_id: int) -> RegisteredKVCache | None:
        for source in self._snapshot():
            cache = source.kv_cache(instance_id)
            if cache is not None:
                return cache
        return None
