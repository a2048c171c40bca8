"""CacheEngine: the server's domain root (chunking, hashing, storage) and its /status tree."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from lmcache_core.hashing import TokenHasher
from lmcache_core.kv_caches import KVCacheRegistry
from lmcache_core.ports import Clock
from lmcache_core.status import compose_status
from lmcache_core.storage_manager import StorageManager

log = logging.getLogger(__name__)

StatusContributor = Callable[[], dict[str, Any]]
"""Returns top-level /status fields of a module (the data path adds sessions, GPU contexts,
prefetch jobs, workers). A contributor may set `is_healthy` to False to mark the engine unhealthy."""

# The field name and value existing status viewers key on (LMCache's MP server reports this).
ENGINE_TYPE = "MPCacheServer"


class CacheEngine:
    """Owns the storage manager and the hasher; modules (data path, ...) contribute status fields."""

    def __init__(self, storage: StorageManager, hasher: TokenHasher, *, clock: Clock) -> None:
        self.storage = storage
        self.hasher = hasher
        self.clock = clock
        self.started_at = clock.time()
        self.kv_caches = KVCacheRegistry()
        """The KV caches registered by the data-path frontends (for checksums and prefetches)."""
        self._contributors: dict[str, StatusContributor] = {}
        self._lock = threading.Lock()

    @property
    def chunk_size(self) -> int:
        return self.hasher.chunk_size

    def start(self) -> None:
        self.storage.start()

    def close(self) -> None:
        self.storage.close()

    def add_status_contributor(self, name: str, contributor: StatusContributor) -> None:
        """Register a module's status fields under its name (replacing an earlier one)."""
        with self._lock:
            self._contributors[name] = contributor

    def remove_status_contributor(self, name: str) -> None:
        with self._lock:
            self._contributors.pop(name, None)

    def report_status(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "engine_type": ENGINE_TYPE,
            "chunk_size": self.chunk_size,
            "hash_algorithm": self.hasher.hash_algorithm_name,
            "active_sessions": 0,
            "registered_gpu_ids": [],
            "cache_context_meta": {},
            "active_prefetch_jobs": 0,
            "uptime_seconds": round(self.clock.time() - self.started_at, 3),
        }
        healthy = True
        with self._lock:
            contributors = list(self._contributors.items())
        for name, contributor in contributors:
            try:
                extra = contributor()
            except Exception as exc:
                log.exception("status contributor %s failed", name)
                fields[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
                healthy = False
                continue
            if extra.get("is_healthy") is False:
                healthy = False
            fields.update({k: v for k, v in extra.items() if k != "is_healthy"})
        return compose_status(fields, {"storage_manager": self.storage}, healthy=healthy)
