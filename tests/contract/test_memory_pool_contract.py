"""The MemoryPool contract over both L1 pools: shared memory, and Device-DAX arenas on regular files
(one arena, and two arenas so that allocation, churn and frees cross an arena boundary), and the
tests' pure-python BytearrayMemoryPool."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmcache_adapters.memory import SharedMemoryPool
from lmcache_adapters.memory.dax_pool import DaxMemoryPool
from lmcache_adapters.testing.memory_contract import CAPACITY, MemoryPoolContract, device_file
from lmcache_core.testing import BytearrayMemoryPool


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
class TestSharedMemoryPoolContract(MemoryPoolContract):
    @pytest.fixture
    def pool(self) -> Iterator[SharedMemoryPool]:
        p = SharedMemoryPool(CAPACITY, shm_suffix=f"contract_{os.getpid()}_{uuid.uuid4().hex[:8]}", prefault="none")
        yield p
        p.close()


class TestDaxMemoryPoolContract(MemoryPoolContract):
    @pytest.fixture
    def pool(self, tmp_path: Path) -> Iterator[DaxMemoryPool]:
        p = DaxMemoryPool(device_file(tmp_path / "l1.img", CAPACITY), CAPACITY)
        yield p
        p.close()


class TestTwoArenaDaxMemoryPoolContract(MemoryPoolContract):
    @pytest.fixture
    def pool(self, tmp_path: Path) -> Iterator[DaxMemoryPool]:
        half = CAPACITY // 2
        p = DaxMemoryPool(device_file(tmp_path / "a.img", half), half)
        p.add_arena(device_file(tmp_path / "b.img", half), half)
        yield p
        p.close()


class TestBytearrayMemoryPoolContract(MemoryPoolContract):
    """The test allocator obeys the same contract, so unit tests over it mean what they say."""

    @pytest.fixture
    def pool(self) -> Iterator[BytearrayMemoryPool]:
        p = BytearrayMemoryPool(CAPACITY)
        yield p
        p.close()
