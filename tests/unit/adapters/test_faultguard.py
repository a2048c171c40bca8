"""The SIGBUS guard: a truncated mapping costs one request, never the process; the pool recovers."""

from __future__ import annotations

import mmap
import os
import uuid
from collections.abc import Iterator

import pytest
import torch

from lmcache_adapters.memory import faultguard
from lmcache_adapters.memory.faultguard import (
    GuardedRange,
    SegmentFaultError,
    fault_count,
    native_guard,
)
from lmcache_adapters.memory.shm_pool import SharedMemoryPool

SIZE = 1 << 20


@pytest.fixture
def segment() -> Iterator[tuple[int, mmap.mmap, torch.Tensor]]:
    path = f"/dev/shm/faultguard_{uuid.uuid4().hex[:10]}"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, SIZE)
    mapping = mmap.mmap(fd, SIZE)
    yield fd, mapping, torch.frombuffer(mapping, dtype=torch.uint8)
    os.close(fd)
    os.unlink(path)


@pytest.mark.skipif(not native_guard(), reason="the native guard was not built (no C compiler)")
def test_a_copy_over_a_truncated_mapping_finishes_and_is_counted(segment: tuple[int, mmap.mmap, torch.Tensor]) -> None:
    fd, mapping, tensor = segment
    guard = GuardedRange(tensor.data_ptr(), SIZE, fd=None, name="test", owner=mapping)
    tensor.fill_(7)
    before = fault_count()
    os.ftruncate(fd, 4096)
    out = tensor.clone()  # reads past the new end: SIGBUS without the guard
    assert fault_count() > before and guard.faults() >= 1
    assert int(out[:4096].min()) == 7 and int(out[8192:].max()) == 0  # patched pages read zeros
    tensor[8192:] = 1  # writes land on the patch, harmlessly
    assert guard.take_lowest_fault() == 4096 and guard.take_lowest_fault() is None
    guard.close()


def test_without_the_native_guard_sizes_are_checked_before_copies(
    segment: tuple[int, mmap.mmap, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    fd, mapping, tensor = segment
    monkeypatch.setattr(faultguard, "_native", None)
    guard = GuardedRange(tensor.data_ptr(), SIZE, fd=fd, name="seg", owner=mapping)
    assert not guard.native
    guard.check_size()
    os.ftruncate(fd, 4096)
    with pytest.raises(SegmentFaultError, match="truncated to 4096 bytes"):
        guard.check_size()


@pytest.mark.skipif(not native_guard(), reason="the native guard was not built (no C compiler)")
def test_the_pool_recovers_from_a_truncation() -> None:
    pool = SharedMemoryPool(4 << 20, shm_suffix=f"fg_{uuid.uuid4().hex[:8]}", prefault="none", pin_memory=False)
    try:
        low, high = pool.allocate(4096), pool.allocate(1 << 20)
        assert low is not None and high is not None
        pool.tensor_view(low).fill_(3)
        os.truncate(pool.shm_path, 8192)
        assert pool.needs_recovery()
        pool.tensor_view(high).fill_(5)  # a copy into the cut pool: caught, lands on a patch
        lost = pool.recover()
        assert lost is not None and lost <= high.offset and lost >= 4096
        assert os.stat(pool.shm_path).st_size == pool.capacity_bytes and not pool.needs_recovery()
        # The file is mapped again: writes reach the segment, low bytes kept.
        pool.tensor_view(high).fill_(9)
        with open(pool.shm_path, "rb") as f:
            f.seek(high.offset)
            assert f.read(16) == b"\x09" * 16
        assert int(pool.tensor_view(low).min()) == 3
        assert pool.report_status()["truncation_recoveries_total"] == 1
        assert pool.recover() is None
    finally:
        pool.close()
