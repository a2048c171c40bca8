"""The storage backend contract and the L2 contract over the `fs` kind in a temporary directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmcache_adapters.l2.fs import FSBackend, FSL2Adapter, shard_dirs
from lmcache_adapters.testing import L2AdapterContract, StorageBackendContract
from lmcache_core.keys import ObjectKey


def object_path(adapter: FSL2Adapter | FSBackend, key: ObjectKey) -> Path:
    return Path(adapter.base_path, *shard_dirs(key), key.to_storage_name())


def flip_payload_byte(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size - 7)  # inside the payload
        byte = f.read(1)
        f.seek(size - 7)
        f.write(bytes([byte[0] ^ 0x10]))
        f.flush()
        os.fsync(f.fileno())


class TestFSBackendContract(StorageBackendContract):
    supports_listing = True
    persists_bytes = True

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[FSBackend]:
        backend = FSBackend(str(tmp_path / "l2"))
        yield backend
        backend.close()

    @pytest.fixture
    def capacity_limited_backend(self, tmp_path: Path) -> Iterator[FSBackend]:
        backend = FSBackend(str(tmp_path / "l2-small"), capacity_bytes=40_000)
        yield backend
        backend.close()

    def corrupt(self, backend: FSBackend, key: ObjectKey) -> None:  # type: ignore[override]
        flip_payload_byte(object_path(backend, key))


class TestFSContract(L2AdapterContract):
    supports_listing = True
    persists_bytes = True

    @pytest.fixture
    def adapter(self, tmp_path: Path) -> Iterator[FSL2Adapter]:
        adapter = FSL2Adapter(str(tmp_path / "l2"))
        yield adapter
        adapter.close()

    @pytest.fixture
    def capacity_limited_adapter(self, tmp_path: Path) -> Iterator[FSL2Adapter]:
        adapter = FSL2Adapter(str(tmp_path / "l2-small"), capacity_bytes=40_000)
        yield adapter
        adapter.close()

    def corrupt(self, adapter: FSL2Adapter, key: ObjectKey) -> None:  # type: ignore[override]
        flip_payload_byte(object_path(adapter, key))


class TestFSODirectContract(TestFSContract):
    """The same contract with O_DIRECT requested (it falls back where the filesystem refuses it)."""

    @pytest.fixture
    def adapter(self, tmp_path: Path) -> Iterator[FSL2Adapter]:
        adapter = FSL2Adapter(str(tmp_path / "l2"), use_odirect=True)
        yield adapter
        adapter.close()
