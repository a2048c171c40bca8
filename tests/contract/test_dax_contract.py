"""The storage backend contract and the L2 contract over the `dax` kind, on regular files standing in for Device-DAX devices."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmcache_adapters.l2.dax import SLOT_OVERHEAD, DaxBackend, DaxL2Adapter
from lmcache_adapters.testing import L2AdapterContract, StorageBackendContract
from lmcache_core.keys import ObjectKey

MIB = 1024 * 1024
# Room for the contract's 1 MiB object; the files stay sparse, so 2 x 400 slots cost little disk.
SLOT_BYTES = MIB + 4096
SLOTS_PER_DEVICE = 400


def device_size(slots: int, slot_bytes: int) -> int:
    return 4096 + slots * slot_bytes


def flip_payload_byte(backend: DaxBackend, key: ObjectKey) -> None:
    loc = backend.slots.locations[key]
    offset = loc.device.slot_offset(loc.slot) + SLOT_OVERHEAD + loc.length // 2  # inside the payload
    fd = os.open(loc.device.path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0x10]), offset)
    finally:
        os.close(fd)


class TestDaxBackendContract(StorageBackendContract):
    supports_listing = True
    persists_bytes = True

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[DaxBackend]:
        size = device_size(16, SLOT_BYTES)
        backend = DaxBackend([{"path": str(tmp_path / "dax0"), "size": size}], SLOT_BYTES, preallocate=False)
        yield backend
        backend.close()

    @pytest.fixture
    def capacity_limited_backend(self, tmp_path: Path) -> Iterator[DaxBackend]:
        backend = DaxBackend([{"path": str(tmp_path / "small"), "size": device_size(4, 8192)}], 8192)
        yield backend
        backend.close()

    def corrupt(self, backend: DaxBackend, key: ObjectKey) -> None:  # type: ignore[override]
        flip_payload_byte(backend, key)


class TestDaxContract(L2AdapterContract):
    supports_listing = True
    persists_bytes = True

    @pytest.fixture
    def adapter(self, tmp_path: Path) -> Iterator[DaxL2Adapter]:
        size = device_size(SLOTS_PER_DEVICE, SLOT_BYTES)
        adapter = DaxL2Adapter(
            [
                {"path": str(tmp_path / "dax0"), "size": size},
                {"path": str(tmp_path / "dax1"), "size": size},
            ],
            SLOT_BYTES,
            preallocate=False,
        )
        yield adapter
        adapter.close()

    @pytest.fixture
    def capacity_limited_adapter(self, tmp_path: Path) -> Iterator[DaxL2Adapter]:
        # 4 slots of 8 KiB: capacity 32 KiB, so the contract's objects (capacity / 5) fit 4 times
        adapter = DaxL2Adapter(
            [{"path": str(tmp_path / "small"), "size": device_size(4, 8192)}], 8192
        )
        yield adapter
        adapter.close()

    def corrupt(self, adapter: DaxL2Adapter, key: ObjectKey) -> None:  # type: ignore[override]
        flip_payload_byte(adapter.backend, key)
