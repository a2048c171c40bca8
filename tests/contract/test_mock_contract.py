"""The L2 adapter contract over the in-memory reference adapter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lmcache_adapters.l2.mock import MockL2Adapter
from lmcache_adapters.testing import L2AdapterContract


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
