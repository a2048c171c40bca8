"""The contract suites a plugin's tests subclass (pytest, numpy; no torch).

- `StorageBackendContract`: a narrow `StorageBackend` (fixture `backend`);
- `L2AdapterContract`: a complete `L2Adapter`, e.g. `BackendL2Adapter(backend)` (fixture `adapter`);
- `MemoryPoolContract`: an L1 `MemoryPool` (fixture `pool`);
- `LMCachePluginManager`: register a plugin module without installing it
  (`LMCachePluginManager(load_entrypoints=False).register(module, "my-plugin")`).

Subclass one in a `Test...` class; pytest collects the subclass, not the base.
"""

from lmcache_adapters.plugin_manager import LMCachePluginManager
from lmcache_adapters.testing import (
    L2AdapterContract,
    StorageBackendContract,
    make_key,
    tensor_payload,
)
from lmcache_adapters.testing.memory_contract import MemoryPoolContract

__all__ = [
    "L2AdapterContract",
    "LMCachePluginManager",
    "MemoryPoolContract", "StorageBackendContract", "make_key",
    "tensor_payload",
]
