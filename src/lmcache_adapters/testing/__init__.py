"""Shared test suites for adapter authors: subclass `L2AdapterContract` to test an L2 adapter,
`MemoryPoolContract` (in `lmcache_adapters.testing.memory_contract`) to test an L1 memory pool.

Usage in a third-party package (pytest collects the subclass, not the base)::

    from lmcache_adapters.testing import L2AdapterContract

    class TestMyContract(L2AdapterContract):
        @pytest.fixture
        def adapter(self, tmp_path):
            a = MyL2Adapter(...)
            yield a
            a.close()
"""

from lmcache_adapters.testing.l2_contract import L2AdapterContract, make_key, tensor_payload

__all__ = ["L2AdapterContract", "make_key", "tensor_payload"]
