"""The data path's registrations as a KVCacheSource of the engine: what the admin operations
(checksums, warm prefetch) need to know of the KV caches engines registered."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmcache_adapters.transfer.layout import KVCacheLayout, UnsupportedLayoutError
from lmcache_core.errors import InvalidRequestError, NotSupportedError
from lmcache_core.kv_caches import Checksums


class ServerDrivenKVCache:
    """One server-driven registration's KV tensors (RegisteredKVCache)."""

    def __init__(self, layout: KVCacheLayout) -> None:
        self._layout = layout

    def checksums(self, block_ids: Sequence[int], chunk_blocks: int, *, layerwise: bool) -> Checksums:
        try:
            sums: Checksums = self._layout.checksums(block_ids, chunk_blocks, layerwise=layerwise)
        except UnsupportedLayoutError as exc:
            raise NotSupportedError(str(exc)) from None
        except (IndexError, RuntimeError) as exc:  # a block id past the registered blocks
            raise InvalidRequestError(f"Invalid block_ids format: {exc}") from None
        return sums


class DataPathKVCaches:
    """A KVCacheSource over one running ZeroMQ data-path server."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def object_size(self, model_name: str, world_size: int) -> int | None:
        size: int | None = self._server.data_path.object_size(model_name, world_size)
        return size

    def kv_cache(self, instance_id: int) -> ServerDrivenKVCache | None:
        inst = self._server.instances().get(instance_id)
        if inst is None or inst.layout is None:  # engine-driven registrations share no tensors
            return None
        return ServerDrivenKVCache(inst.layout)
