"""Tests of SharedMemoryPool: the named shm segment, slab allocator, zero-copy views, cleanup."""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import random
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lmcache_adapters.memory import (
    PAGE_BYTES,
    SHM_NAME_PREFIX,
    SharedMemoryPool,
    cleanup_stale_segments,
    create_l1_pool,
    default_segment_name,
    process_start_ticks,
    segment_owner_alive,
)
from lmcache_core.errors import ConfigError
from lmcache_core.ports import MemoryHandle, MemoryPool

KiB = 1024
MiB = 1024 * KiB

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")


@pytest.fixture
def suffix() -> str:
    return f"test_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def pool(suffix: str) -> Iterator[SharedMemoryPool]:
    p = SharedMemoryPool(4 * MiB, shm_suffix=suffix, slab_bytes=256 * KiB, prefault="none")
    yield p
    p.close()


def _run_child(code: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


# ----------------------------------------------------------------------------- segment


def test_is_a_memory_pool(pool: SharedMemoryPool) -> None:
    assert isinstance(pool, MemoryPool)


def test_segment_is_private_named_and_sized_while_open_and_gone_after_close(suffix: str) -> None:
    p = SharedMemoryPool(2 * MiB, shm_suffix=suffix, prefault="none")
    assert p.shm_name == f"lmcache_l1_pool_{suffix}"
    assert not p.shm_name.startswith("/")
    assert p.shm_path == f"/dev/shm/lmcache_l1_pool_{suffix}"
    st = os.stat(p.shm_path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    assert st.st_size == p.capacity_bytes == 2 * MiB
    # No temporary creation name is left behind.
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(p.shm_name + ".tmp")]
    p.close()
    assert not os.path.exists(p.shm_path)


def test_default_name_is_the_server_pid() -> None:
    p = SharedMemoryPool(1 * MiB, prefault="none")
    try:
        assert p.shm_name == default_segment_name() == f"{SHM_NAME_PREFIX}srv-{os.getpid()}-{process_start_ticks(os.getpid())}"
        assert os.path.exists(f"/dev/shm/{p.shm_name}")
    finally:
        p.close()


def test_capacity_is_whole_slabs_and_invalid_sizes_are_config_errors(suffix: str) -> None:
    p = SharedMemoryPool(1 * MiB + 5000, shm_suffix=suffix, slab_bytes=256 * KiB, prefault="none")
    try:
        assert p.capacity_bytes == 1 * MiB
        assert os.stat(p.shm_path).st_size == 1 * MiB
    finally:
        p.close()
    with pytest.raises(ConfigError):
        SharedMemoryPool(100, shm_suffix=suffix)
    with pytest.raises(ConfigError, match="shm-name"):
        SharedMemoryPool(1 * MiB, shm_suffix="a/b")


def test_close_is_idempotent_and_closed_pool_refuses_work(pool: SharedMemoryPool) -> None:
    h = pool.allocate(100)
    assert h is not None
    pool.close()
    pool.close()
    assert pool.closed
    assert pool.allocate(100) is None
    with pytest.raises(ValueError):
        pool.view(h)
    status = pool.report_status()
    assert status["is_healthy"] is False


def test_close_with_views_still_alive_keeps_them_valid(
    suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    p = SharedMemoryPool(1 * MiB, shm_suffix=suffix, prefault="none")
    h = p.allocate(8192)
    assert h is not None
    t = p.tensor_view(h, torch.int32)
    mv = p.view(h)
    t.fill_(7)
    with caplog.at_level(logging.WARNING):
        p.close()
    # The segment name is gone, but memory behind live views was not unmapped under them.
    assert not os.path.exists(p.shm_path)
    assert "still in use" in caplog.text
    assert int(t.sum()) == 7 * 2048
    assert bytes(mv[:4]) == (7).to_bytes(4, sys.byteorder)


# ----------------------------------------------------------------------------- access


def test_view_is_exactly_nbytes_writable_and_zero_copy(pool: SharedMemoryPool) -> None:
    h = pool.allocate(5000)
    assert h is not None
    mv = pool.view(h)
    assert mv.nbytes == 5000 and not mv.readonly
    mv[:5] = b"hello"
    assert bytes(pool.tensor[h.offset : h.offset + 5].numpy()) == b"hello"


def test_tensor_view_writes_are_seen_by_memoryview_and_by_an_engine_mapping(
    pool: SharedMemoryPool,
) -> None:
    h = pool.allocate(2 * 16 * 64 * 2)
    assert h is not None
    t = pool.tensor_view(h, torch.float16, (2, 16, 64))
    assert t.data_ptr() == pool.tensor.data_ptr() + h.offset
    t.copy_(torch.arange(2 * 16 * 64, dtype=torch.float16).reshape(2, 16, 64))
    expected = t.numpy().tobytes()
    assert bytes(pool.view(h)) == expected

    # An engine opens the segment by name and maps pool_size bytes on its own.
    fd = os.open(f"/dev/shm/{pool.shm_name}", os.O_RDWR)
    try:
        engine = mmap.mmap(fd, pool.capacity_bytes)
    finally:
        os.close(fd)
    try:
        assert engine[h.offset : h.offset + h.nbytes] == expected
        # ...and the other direction: the engine writes a chunk, the server sees it.
        engine[h.offset : h.offset + 4] = b"\x01\x02\x03\x04"
        assert bytes(pool.view(h)[:4]) == b"\x01\x02\x03\x04"
        assert pool.tensor_view(h)[:4].tolist() == [1, 2, 3, 4]
    finally:
        engine.close()


def test_tensor_view_rejects_a_shape_larger_than_the_object(pool: SharedMemoryPool) -> None:
    h = pool.allocate(100)
    assert h is not None
    with pytest.raises(ValueError, match="needs"):
        pool.tensor_view(h, torch.float32, (26,))
    assert pool.tensor_view(h, torch.float32).shape == (25,)


# ----------------------------------------------------------------------------- allocator


def test_offsets_are_aligned_disjoint_and_inside_the_pool(pool: SharedMemoryPool) -> None:
    rng = random.Random(1)
    handles: list[MemoryHandle] = []
    while True:
        h = pool.allocate(rng.randint(1, 40 * KiB))
        if h is None:
            break
        handles.append(h)
    assert len(handles) > 50
    spans = sorted((h.offset, h.offset + h.slot_bytes) for h in handles)
    for h in handles:
        assert h.offset % PAGE_BYTES == 0
        assert h.slot_bytes % PAGE_BYTES == 0 and h.slot_bytes >= h.nbytes
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start
    assert spans[-1][1] <= pool.capacity_bytes
    assert pool.used_bytes == sum(h.slot_bytes for h in handles)


def test_out_of_memory_returns_none_and_a_free_makes_room(pool: SharedMemoryPool) -> None:
    handles = []
    while (h := pool.allocate(64 * KiB)) is not None:
        handles.append(h)
    assert len(handles) == pool.capacity_bytes // (64 * KiB)
    assert pool.allocate(64 * KiB) is None
    assert pool.allocate(pool.capacity_bytes + 1) is None
    pool.free(handles.pop())
    assert pool.allocate(64 * KiB) is not None


def test_double_and_foreign_frees_raise_value_error(pool: SharedMemoryPool) -> None:
    h = pool.allocate(100)
    assert h is not None
    with pytest.raises(ValueError):
        pool.free(MemoryHandle(offset=h.offset, nbytes=99, slot_bytes=h.slot_bytes))
    with pytest.raises(ValueError):
        pool.free(MemoryHandle(offset=h.offset + PAGE_BYTES, nbytes=100, slot_bytes=PAGE_BYTES))
    pool.free(h)
    with pytest.raises(ValueError):
        pool.free(h)
    with pytest.raises(ValueError):
        pool.view(h)
    assert pool.used_bytes == 0


def test_allocate_rejects_non_positive_sizes(pool: SharedMemoryPool) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError):
            pool.allocate(bad)


def test_emptied_slabs_go_back_to_other_size_classes(pool: SharedMemoryPool) -> None:
    small = [pool.allocate(4 * KiB) for _ in range(pool.capacity_bytes // (4 * KiB))]
    assert all(h is not None for h in small)
    assert pool.allocate(8 * KiB) is None
    for h in small:
        assert h is not None
        pool.free(h)
    status = pool.report_status()
    assert status["slabs_free"] == status["slabs_total"] and status["size_classes"] == 0
    big = [pool.allocate(8 * KiB) for _ in range(pool.capacity_bytes // (8 * KiB))]
    assert all(h is not None for h in big)


def test_objects_larger_than_a_slab_get_contiguous_slabs(pool: SharedMemoryPool) -> None:
    slab = pool.slab_bytes
    h = pool.allocate(slab * 2 + 1)
    assert h is not None
    pool.view(h)[-1:] = b"\xff"  # the whole object is addressable
    status = pool.report_status()
    assert status["slabs_free"] <= status["slabs_total"] - 3
    assert h.offset + h.nbytes <= pool.capacity_bytes
    pool.free(h)
    assert pool.report_status()["slabs_free"] == pool.report_status()["slabs_total"]
    whole = pool.allocate(pool.capacity_bytes)
    assert whole is not None and whole.offset == 0


def test_random_churn_never_fails_while_each_class_stays_in_its_share_of_capacity_minus_a_slab_per_class(
    suffix: str,
) -> None:
    # A size class takes a new slab only when all of its slabs are full, so per-class live
    # budgets that sum to at most capacity - one slab per class can never run out.
    p = SharedMemoryPool(4 * MiB, shm_suffix=suffix, slab_bytes=128 * KiB, prefault="none")
    try:
        slots = [4 * KiB, 16 * KiB, 32 * KiB, 20 * KiB]  # the last one leaves tail waste
        sizes = [4 * KiB, 16 * KiB - 100, 32 * KiB, 20 * KiB - 1]
        per_slab = [p.slab_bytes // s for s in slots]
        spare_slabs = p.capacity_bytes // p.slab_bytes - len(slots)
        shares = [spare_slabs // len(slots)] * len(slots)
        shares[0] += spare_slabs - sum(shares)
        budget = [shares[i] * per_slab[i] for i in range(len(slots))]  # objects per class
        rng = random.Random(7)
        live: list[list[MemoryHandle]] = [[] for _ in slots]
        for _ in range(20_000):
            i = rng.randrange(len(slots))
            # Biased towards allocating, and now and then drained to zero and refilled.
            if len(live[i]) < budget[i] and rng.random() < 0.6:
                h = p.allocate(sizes[i])
                assert h is not None, (
                    f"class {slots[i]} failed with {len(live[i])} of {budget[i]} live"
                )
                live[i].append(h)
            elif live[i]:
                p.free(live[i].pop(rng.randrange(len(live[i]))))
            if rng.random() < 0.0005:
                for h in live[i]:
                    p.free(h)
                live[i].clear()
        live_bytes = sum(h.slot_bytes for hs in live for h in hs)
        assert p.used_bytes == live_bytes
        assert live_bytes > 0.7 * sum(b * s for b, s in zip(budget, slots, strict=True))
    finally:
        p.close()


def test_churn_of_one_odd_size_never_loses_a_slot(suffix: str) -> None:
    p = SharedMemoryPool(2 * MiB, shm_suffix=suffix, slab_bytes=64 * KiB, prefault="none")
    try:
        size = 20_000  # a 20 KiB slot: three per slab
        full = []
        while (h := p.allocate(size)) is not None:
            full.append(h)
        assert len(full) == (p.capacity_bytes // p.slab_bytes) * 3
        rng = random.Random(3)
        for _ in range(5_000):
            if full and rng.random() < 0.5:
                p.free(full.pop(rng.randrange(len(full))))
            else:
                h = p.allocate(size)
                if h is not None:
                    full.append(h)
        while (h := p.allocate(size)) is not None:
            full.append(h)
        assert len(full) == (p.capacity_bytes // p.slab_bytes) * 3
    finally:
        p.close()


def test_concurrent_allocate_and_free_keep_the_books_straight(pool: SharedMemoryPool) -> None:
    errors: list[BaseException] = []
    seen_lock = threading.Lock()
    owned: set[int] = set()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[MemoryHandle] = []
        try:
            for _ in range(2_000):
                if mine and rng.random() < 0.5:
                    h = mine.pop()
                    with seen_lock:
                        owned.remove(h.offset)
                    pool.free(h)
                else:
                    h2 = pool.allocate(rng.choice([4 * KiB, 12 * KiB, 64 * KiB]))
                    if h2 is not None:
                        with seen_lock:
                            assert h2.offset not in owned, "offset handed out twice"
                            owned.add(h2.offset)
                        mine.append(h2)
            for h in mine:
                with seen_lock:
                    owned.remove(h.offset)
                pool.free(h)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert pool.used_bytes == 0
    status = pool.report_status()
    assert status["slabs_free"] == status["slabs_total"]


# ----------------------------------------------------------------------------- status


def test_report_status_fields(pool: SharedMemoryPool) -> None:
    h = pool.allocate(5000)
    assert h is not None
    s = pool.report_status()
    assert s["is_healthy"] is True
    assert s["shm_name"] == pool.shm_name
    assert s["capacity_bytes"] == 4 * MiB
    assert s["used_bytes"] == 8 * KiB and s["free_bytes"] == 4 * MiB - 8 * KiB
    assert s["usage_ratio"] == pytest.approx(8 / 4096)
    assert s["slab_bytes"] == 256 * KiB
    assert (s["slabs_total"], s["slabs_free"], s["size_classes"]) == (16, 15, 1)
    assert s["pinned"] is False  # no CUDA in this test run
    assert s["prefault"] == "none"


# ----------------------------------------------------------------------------- CUDA


class _FakeCudart:
    class cudaError:  # noqa: N801 - mirrors torch's binding
        success = 0

    def __init__(self, register_result: int = 0) -> None:
        self.register_result = register_result
        self.calls: list[tuple[Any, ...]] = []

    def cudaHostRegister(self, ptr: int, size: int, flags: int) -> int:  # noqa: N802
        self.calls.append(("register", ptr, size, flags))
        return self.register_result

    def cudaHostUnregister(self, ptr: int) -> int:  # noqa: N802
        self.calls.append(("unregister", ptr))
        return 0

    def cudaGetErrorString(self, err: int) -> str:  # noqa: N802
        return f"error {err}"


def test_pool_is_registered_with_cuda_when_available(
    monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    fake = _FakeCudart()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    p = SharedMemoryPool(1 * MiB, shm_suffix=suffix, prefault="background")
    ptr = p.tensor.data_ptr()
    assert fake.calls == [("register", ptr, 1 * MiB, 0)]
    status = p.report_status()
    assert status["pinned"] is True
    assert status["prefault"] == "done"  # pinning makes every page resident
    p.close()
    assert fake.calls[-1] == ("unregister", ptr)


def test_failed_pinning_warns_and_continues_unpinned(
    monkeypatch: pytest.MonkeyPatch, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake = _FakeCudart(register_result=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    with caplog.at_level(logging.WARNING):
        p = SharedMemoryPool(1 * MiB, shm_suffix=suffix, prefault="none")
    try:
        assert "continuing unpinned" in caplog.text
        assert p.report_status()["pinned"] is False
        assert p.allocate(100) is not None
    finally:
        p.close()
    assert all(call[0] == "register" for call in fake.calls)  # nothing to unregister


# ----------------------------------------------------------------------------- pre-fault


def _resident_bytes(p: SharedMemoryPool) -> int:
    return os.stat(p.shm_path).st_blocks * 512


def test_prefault_none_leaves_the_segment_unbacked(pool: SharedMemoryPool) -> None:
    assert _resident_bytes(pool) == 0


def test_prefault_sync_backs_the_whole_segment_before_returning(suffix: str) -> None:
    p = SharedMemoryPool(4 * MiB, shm_suffix=suffix, prefault="sync")
    try:
        assert _resident_bytes(p) == p.capacity_bytes
        s = p.report_status()
        assert (s["prefault"], s["prefaulted_bytes"]) == ("done", p.capacity_bytes)
    finally:
        p.close()


def test_prefault_background_backs_the_first_region_at_once_and_the_rest_later(suffix: str) -> None:
    p = SharedMemoryPool(
        8 * MiB,
        shm_suffix=suffix,
        prefault="background",
        prefault_first_bytes=1 * MiB,
        prefault_step_bytes=1 * MiB,
    )
    try:
        assert _resident_bytes(p) >= 1 * MiB
        assert p.report_status()["prefault"] in ("in_progress", "done")
        assert p.wait_prefaulted(timeout=30)
        assert _resident_bytes(p) == p.capacity_bytes
        assert p.report_status()["prefault"] == "done"
    finally:
        p.close()


def test_prefault_does_not_change_data_already_written(suffix: str) -> None:
    p = SharedMemoryPool(
        8 * MiB,
        shm_suffix=suffix,
        prefault="background",
        prefault_first_bytes=0,
        prefault_step_bytes=PAGE_BYTES,
    )
    try:
        h = p.allocate(7 * MiB)
        assert h is not None
        p.tensor_view(h).fill_(0xAB)
        assert p.wait_prefaulted(timeout=30)
        assert bool((p.tensor_view(h) == 0xAB).all())
    finally:
        p.close()


def test_close_stops_the_background_prefault_thread(suffix: str) -> None:
    p = SharedMemoryPool(
        64 * MiB,
        shm_suffix=suffix,
        prefault="background",
        prefault_first_bytes=0,
        prefault_step_bytes=PAGE_BYTES,
    )
    thread = p._prefault_thread
    started = time.monotonic()
    p.close()
    assert time.monotonic() - started < 5  # the bound under test: close interrupts, not its 30 s join
    assert thread is None or not thread.is_alive()
    assert not os.path.exists(p.shm_path)


def test_invalid_prefault_mode_is_a_config_error(suffix: str) -> None:
    with pytest.raises(ConfigError, match="prefault"):
        SharedMemoryPool(1 * MiB, shm_suffix=suffix, prefault="eager")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- ownership


def test_two_live_pools_with_the_same_name_conflict(pool: SharedMemoryPool) -> None:
    suffix = pool.shm_name.removeprefix(SHM_NAME_PREFIX)
    with pytest.raises(ConfigError, match=pool.shm_name):
        SharedMemoryPool(1 * MiB, shm_suffix=suffix, prefault="none")
    # The loser must not have damaged the owner's segment.
    assert os.path.exists(pool.shm_path)
    assert pool.shm_name not in cleanup_stale_segments()
    h = pool.allocate(10)
    assert h is not None


class _Children:
    """Server processes for the ownership tests, started together (each pays a torch import)."""

    def __init__(self) -> None:
        tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.held_suffix = f"held_{tag}"
        self.forgotten_suffix = f"forgotten_{tag}"
        # Holds a pid-named and an explicitly named pool until told to die without close().
        self.holder = _run_child(
            "import os, sys\n"
            "from lmcache_adapters.memory import SharedMemoryPool\n"
            "a = SharedMemoryPool(1 << 20, prefault='none', cleanup_stale=False)\n"
            f"b = SharedMemoryPool(1 << 20, shm_suffix={self.held_suffix!r}, prefault='none')\n"
            "print(a.shm_name, flush=True)\n"
            "sys.stdin.readline()\n"
            "os._exit(0)\n"
        )
        # Exits normally without calling close().
        self.forgetful = _run_child(
            "from lmcache_adapters.memory import SharedMemoryPool\n"
            f"p = SharedMemoryPool(1 << 20, shm_suffix={self.forgotten_suffix!r}, prefault='none')\n"
            "print(p.shm_path, flush=True)\n"
        )

    def stop(self) -> None:
        for child in (self.holder, self.forgetful):
            if child.poll() is None:
                child.kill()
            child.communicate(timeout=60)
        for suffix in (self.held_suffix, self.forgotten_suffix):
            try:
                os.unlink(f"/dev/shm/{SHM_NAME_PREFIX}{suffix}")
            except FileNotFoundError:
                pass


@pytest.fixture(scope="module")
def children() -> Iterator[_Children]:
    c = _Children()
    yield c
    c.stop()


def test_segments_of_a_live_server_are_refused_and_replaced_once_it_is_killed(
    children: _Children,
) -> None:
    holder = children.holder
    assert holder.stdout is not None and holder.stdin is not None
    pid_named = holder.stdout.readline().strip()
    assert pid_named == default_segment_name(holder.pid)
    held = f"{SHM_NAME_PREFIX}{children.held_suffix}"

    # While the owner lives, its segments are untouchable.
    with pytest.raises(ConfigError, match=held):
        SharedMemoryPool(1 * MiB, shm_suffix=children.held_suffix, prefault="none")
    assert pid_named not in cleanup_stale_segments()
    assert os.path.exists(f"/dev/shm/{pid_named}") and os.path.exists(f"/dev/shm/{held}")

    # The owner dies without close(): both segments are left behind...
    holder.stdin.write("die\n")
    holder.stdin.flush()
    holder.wait(timeout=60)
    # (The pid-named one is not checked here: any server starting on this machine may sweep it.)
    assert os.path.exists(f"/dev/shm/{held}")

    # ...the next server's start, under any name, removes the default-named one (its name
    # proves it is ours and its owner process is gone)...
    other = f"other_{children.held_suffix}"
    p = SharedMemoryPool(2 * MiB, shm_suffix=other, prefault="none")
    try:
        assert not os.path.exists(f"/dev/shm/{pid_named}")
        # (Another server starting on this machine meanwhile may have swept it first.)
        assert p.report_status()["stale_segments_removed"] == p.stale_segments_removed
        # ...but never another --shm-name: it may be anyone's. Only a server of that name
        # replaces it (the next test).
        assert os.path.exists(f"/dev/shm/{held}") and held not in p.stale_segments_removed
    finally:
        p.close()
    q = SharedMemoryPool(1 * MiB, shm_suffix=children.held_suffix, prefault="none", cleanup_stale=False)
    q.close()
    assert not os.path.exists(f"/dev/shm/{held}")


def test_a_leftover_of_the_same_name_is_replaced(suffix: str) -> None:
    path = f"/dev/shm/{SHM_NAME_PREFIX}{suffix}"
    with open(path, "wb") as f:  # a dead server's segment: nobody holds its lock
        f.truncate(1 * MiB)
    p = SharedMemoryPool(2 * MiB, shm_suffix=suffix, prefault="none", cleanup_stale=False)
    try:
        assert os.stat(p.shm_path).st_size == 2 * MiB  # ours, not the 1 MiB leftover
    finally:
        p.close()


def test_process_start_ticks_tell_a_reused_pid_apart() -> None:
    mine = process_start_ticks(os.getpid())
    assert isinstance(mine, int) and mine > 0
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    assert process_start_ticks(int(child.stdout)) is None  # gone
    assert process_start_ticks(1) != mine


def test_creation_leftovers_go_only_when_their_exact_process_is_gone(suffix: str) -> None:
    """A `.tmp<pid>.<start>` name is briefly unlocked while a server creates its segment; it is
    swept when that pid is dead or now belongs to a later process, kept while it is the same one."""
    me, started = os.getpid(), process_start_ticks(os.getpid())
    live = f"{SHM_NAME_PREFIX}{suffix}.tmp{me}.{started}"
    reused = f"{SHM_NAME_PREFIX}{suffix}_b.tmp{me}.{(started or 0) + 1}"  # our pid, another start
    dead = f"{SHM_NAME_PREFIX}{suffix}_c.tmp{2**22 + 7}.1"  # beyond pid_max: no such process
    for name in (live, reused, dead):
        open(f"/dev/shm/{name}", "wb").close()
    try:
        removed = cleanup_stale_segments()
        assert reused in removed and dead in removed and live not in removed
        assert os.path.exists(f"/dev/shm/{live}")
    finally:
        for name in (live, reused, dead):
            if os.path.exists(f"/dev/shm/{name}"):
                os.unlink(f"/dev/shm/{name}")


def test_segment_owner_alive_reads_the_lock_without_taking_the_segment(pool: SharedMemoryPool, suffix: str) -> None:
    assert segment_owner_alive(pool.shm_path) is True
    path = f"/dev/shm/{SHM_NAME_PREFIX}{suffix}_orphan"
    open(path, "wb").close()
    try:
        assert segment_owner_alive(path) is False and os.path.exists(path)
    finally:
        os.unlink(path)
    assert segment_owner_alive(path) is False


def test_atexit_fallback_unlinks_a_pool_that_was_never_closed(children: _Children) -> None:
    out, _ = children.forgetful.communicate(timeout=60)
    assert children.forgetful.returncode == 0
    assert out.strip() == f"/dev/shm/{SHM_NAME_PREFIX}{children.forgotten_suffix}"
    assert not os.path.exists(out.strip())


def test_cleanup_never_touches_live_segments(pool: SharedMemoryPool) -> None:
    default = SharedMemoryPool(1 * MiB, prefault="none")  # named after our (live) pid
    try:
        removed = cleanup_stale_segments()
        assert default.shm_name not in removed and pool.shm_name not in removed
        assert os.path.exists(default.shm_path)
    finally:
        default.close()


# ----------------------------------------------------------------------------- factory


def test_create_l1_pool_sizes_in_gib_and_checks_dev_shm(suffix: str) -> None:
    p = create_l1_pool(1 / 256, shm_suffix=suffix, prefault="none")
    try:
        assert p.capacity_bytes == 4 * MiB
        assert p.shm_name == f"lmcache_l1_pool_{suffix}"
    finally:
        p.close()
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="--l1-size-gb"):
            create_l1_pool(bad, shm_suffix=suffix)
    with pytest.raises(ConfigError, match=r"--l1-size-gb.*available"):
        create_l1_pool(1e9, shm_suffix=suffix)
    assert not os.path.exists(f"/dev/shm/lmcache_l1_pool_{suffix}")


def test_segments_of_other_programs_with_our_prefix_are_never_swept() -> None:
    """LMCache's own servers name their pool `lmcache_l1_pool_<pid>` and hold no flock; any
    other program may use our prefix too. A sweep must leave them alone, live or not: it cannot
    prove who owns them (a server of ours once deleted a running reference server's pool)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    names = [
        f"{SHM_NAME_PREFIX}{sleeper.pid}",  # a live LMCache server's default name, no lock
        f"{SHM_NAME_PREFIX}{2**22 + 11}",  # the same form, its pid gone
        f"{SHM_NAME_PREFIX}someones_{uuid.uuid4().hex[:8]}",  # a name chosen by someone else
    ]
    try:
        for name in names:
            with open(f"/dev/shm/{name}", "wb") as f:
                f.truncate(PAGE_BYTES)
        removed = cleanup_stale_segments()
        assert not set(names) & set(removed)
        assert all(os.path.exists(f"/dev/shm/{name}") for name in names)
    finally:
        sleeper.communicate(timeout=30)
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/{name}")


def test_a_dead_default_named_segment_is_swept_even_without_its_owner() -> None:
    dead = default_segment_name(2**22 + 13)  # beyond pid_max: that process cannot exist
    assert dead.endswith(f"-{0}")
    with open(f"/dev/shm/{dead}", "wb") as f:
        f.truncate(PAGE_BYTES)
    try:
        assert dead in cleanup_stale_segments()
        assert not os.path.exists(f"/dev/shm/{dead}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"/dev/shm/{dead}")
