"""Shared test suites for adapter authors (pytest, numpy; no torch).

- `StorageBackendContract`: what a narrow `StorageBackend` must do (its own part);
- `L2AdapterContract`: what a complete `L2Adapter` must do (the standard wrappers run it once
  over an in-memory backend; a backend author may run it over `BackendL2Adapter(backend)` too);
- `MemoryPoolContract` (in `lmcache_adapters.testing.memory_contract`): an L1 memory pool.

Usage in a third-party package (pytest collects the subclass, not the base)::

    from lmcache_adapters.testing import StorageBackendContract

    class TestMyBackend(StorageBackendContract):
        @pytest.fixture
        def backend(self, tmp_path):
            b = MyBackend(...)
            yield b
            b.close()
"""

from lmcache_adapters.testing.backend_contract import StorageBackendContract
from lmcache_adapters.testing.l2_contract import L2AdapterContract
from lmcache_adapters.testing.l2_data import make_key, tensor_payload

__all__ = ["L2AdapterContract", "StorageBackendContract", "make_key", "tensor_payload"]
