"""The storage backend contract over the in-memory backend, and the L2 contract over the `mock` kind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lmcache_adapters.l2.mock import MockBackend, MockL2Adapter
from lmcache_adapters.testing import L2AdapterContract, StorageBackendContract


class TestMockBackendContract(StorageBackendContract):
    supports_listing = True
    persists_bytes = False

    @pytest.fixture
    def backend(self) -> Iterator[MockBackend]:
        backend = MockBackend()
        yield backend
        backend.close()

    @pytest.fixture
    def capacity_limited_backend(self) -> Iterator[MockBackend]:
        backend = MockBackend(capacity_bytes=40_000)
        yield backend
        backend.close()


class TestMockContract(L2AdapterContract):
    supports_listing = True
    persists_bytes = False

    @pytest.fixture
    def adapter(self) -> Iterator[MockL2Adapter]:
        adapter = MockL2Adapter(max_workers=4)
        yield adapter
        adapter.close()

    @pytest.fixture
    def capacity_limited_adapter(self) -> Iterator[MockL2Adapter]:
        adapter = MockL2Adapter(capacity_bytes=40_000)
        yield adapter
        adapter.close()
