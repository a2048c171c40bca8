"""The L2 adapter contract over the serde wrapper: lossless codecs bit-exact, fp8 within tolerance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lmcache_adapters.l2.fs import FSL2Adapter, shard_dirs
from lmcache_adapters.l2.mock import MockL2Adapter
from lmcache_adapters.l2.serde import SerdeL2Adapter, wrap_with_serde
from lmcache_adapters.testing import L2AdapterContract
from lmcache_core.keys import ObjectKey


class TestSerdeZstdOverMockContract(L2AdapterContract):
    @pytest.fixture
    def adapter(self) -> Iterator[SerdeL2Adapter]:
        adapter = wrap_with_serde(MockL2Adapter(max_workers=4), {"type": "zstd", "level": 3})
        yield adapter
        adapter.close()

    @pytest.fixture
    def capacity_limited_adapter(self) -> Iterator[SerdeL2Adapter]:
        # The inner adapter's capacity bounds what the wrapper stores (compressed bytes).
        adapter = wrap_with_serde(MockL2Adapter(capacity_bytes=40_000), {"type": "zstd", "level": 3})
        yield adapter
        adapter.close()


class TestSerdeZlibOverMockContract(L2AdapterContract):
    @pytest.fixture
    def adapter(self) -> Iterator[SerdeL2Adapter]:
        adapter = wrap_with_serde(MockL2Adapter(max_workers=4), {"type": "zlib", "level": 1})
        yield adapter
        adapter.close()

    @pytest.fixture
    def capacity_limited_adapter(self) -> Iterator[SerdeL2Adapter]:
        # The inner adapter's capacity bounds what the wrapper stores (compressed bytes).
        adapter = wrap_with_serde(MockL2Adapter(capacity_bytes=40_000), {"type": "zlib", "level": 1})
        yield adapter
        adapter.close()


class TestSerdeZstdOverFSContract(L2AdapterContract):
    """Over a persisting adapter: a corrupt compressed object is still never served."""

    persists_bytes = True

    @pytest.fixture
    def adapter(self, tmp_path: Path) -> Iterator[SerdeL2Adapter]:
        adapter = wrap_with_serde(FSL2Adapter(str(tmp_path / "l2")), {"type": "zstd"})
        yield adapter
        adapter.close()

    @pytest.fixture
    def capacity_limited_adapter(self, tmp_path: Path) -> Iterator[SerdeL2Adapter]:
        adapter = wrap_with_serde(FSL2Adapter(str(tmp_path / "l2-small"), capacity_bytes=40_000), {"type": "zstd"})
        yield adapter
        adapter.close()

    def corrupt(self, adapter: SerdeL2Adapter, key: ObjectKey) -> None:  # type: ignore[override]
        assert isinstance(adapter.inner, FSL2Adapter)
        path = Path(adapter.inner.base_path, *shard_dirs(key), key.to_storage_name())
        blob = bytearray(path.read_bytes())
        blob[-3] ^= 0x01  # inside the compressed payload
        path.write_bytes(blob)


class TestSerdeFp8OverMockContract(L2AdapterContract):
    """fp8 is lossy: the contract's payload comparisons use an fp8-sized tolerance instead of bit-exactness."""

    @pytest.fixture
    def adapter(self) -> Iterator[SerdeL2Adapter]:
        adapter = wrap_with_serde(
            MockL2Adapter(max_workers=4), {"type": "fp8", "dtype": "bfloat16"}
        )
        yield adapter
        adapter.close()

    @pytest.fixture
    def capacity_limited_adapter(self) -> Iterator[SerdeL2Adapter]:
        # fp8 halves every payload, so 8 objects sized for the contract's check all fit the inner
        # capacity; the capacity rule itself is the inner adapter's (tested over zstd/zlib above).
        pytest.skip("fp8 halves payloads: the contract's capacity sizing does not apply (covered by zstd/zlib)")

    def assert_payload_equal(self, original: memoryview, loaded: memoryview | bytearray) -> None:
        assert len(loaded) == original.nbytes
        want = torch.frombuffer(bytearray(original), dtype=torch.bfloat16).float()
        got = torch.frombuffer(bytearray(loaded), dtype=torch.bfloat16).float()
        amax = float(want.abs().max())
        # e4m3 keeps 3 mantissa bits (<= 6.25% relative error); subnormals cost ~amax/448/512 absolute
        torch.testing.assert_close(got, want, rtol=0.07, atol=amax * 2e-5)
