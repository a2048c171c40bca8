"""The standard L2 stack, tested once: the L2 contract over a bare in-memory backend behind it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lmcache_adapters.l2.mock import MockBackend
from lmcache_adapters.l2.stack import BackendL2Adapter, BreakerSettings
from lmcache_adapters.testing import L2AdapterContract


class TestStackContract(L2AdapterContract):
    supports_listing = True
    persists_bytes = False

    @pytest.fixture
    def adapter(self) -> Iterator[BackendL2Adapter]:
        adapter = BackendL2Adapter(MockBackend(), name="stack", max_workers=4)
        yield adapter
        adapter.close()

    @pytest.fixture
    def capacity_limited_adapter(self) -> Iterator[BackendL2Adapter]:
        adapter = BackendL2Adapter(MockBackend(capacity_bytes=40_000), max_workers=1)
        yield adapter
        adapter.close()


class TestStackWithBreakerContract(TestStackContract):
    """The same with a circuit breaker in the stack (closed throughout: it must change nothing)."""

    @pytest.fixture
    def adapter(self) -> Iterator[BackendL2Adapter]:
        adapter = BackendL2Adapter(MockBackend(), max_workers=4, circuit_breaker=BreakerSettings(threshold=2))
        yield adapter
        adapter.close()
