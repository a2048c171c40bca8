"""DaxMemoryPool: L1 arenas on Device-DAX stand-ins (regular files): adding, draining, identity,
refusals, the address space, /status, and truncation under the SIGBUS guard."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lmcache_adapters.memory import faultguard
from lmcache_adapters.memory.dax_pool import DaxMemoryPool, create_dax_pool
from lmcache_adapters.memory.faultguard import SegmentFaultError, native_guard
from lmcache_adapters.testing.memory_contract import device_file
from lmcache_core.errors import ConfigError, ConflictError, NotFoundError
from lmcache_core.ports import ArenaMemoryPool, MemoryPool, OwnsDevices

MiB = 1 << 20


def device(path: Path, size: int = 4 * MiB) -> str:
    return device_file(path, size)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[DaxMemoryPool]:
    p = DaxMemoryPool(device(tmp_path / "a.img"), 4 * MiB, pin_memory=False)
    yield p
    p.close()


def mapped(path: str) -> bool:
    """Whether this process maps `path` (or keeps a descriptor of it open)."""
    with open("/proc/self/maps") as f:
        if any(line.rstrip().endswith(" " + path) for line in f):
            return True
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == path:
                return True
        except OSError:
            pass
    return False


def test_it_is_an_arena_memory_pool_without_a_shared_name(pool: DaxMemoryPool, tmp_path: Path) -> None:
    assert isinstance(pool, MemoryPool) and isinstance(pool, ArenaMemoryPool) and isinstance(pool, OwnsDevices)
    assert pool.shm_name == "" and pool.backend == "devdax"
    assert pool.arena_statuses() == [
        {
            "device_path": str(tmp_path / "a.img"),
            "size_in_bytes": 4 * MiB,
            "used_bytes": 0,
            "free_bytes": 4 * MiB,
            "active_allocations": 0,
            "state": "active",
            "is_primary": True,
        }
    ]


def test_bytes_live_in_the_device_file(pool: DaxMemoryPool, tmp_path: Path) -> None:
    h = pool.allocate(10_000)
    assert h is not None
    pool.view(h)[:5] = b"hello"
    pool.tensor_view(h, torch.float16, (5000,))[3] = 2.0
    with open(tmp_path / "a.img", "rb") as f:
        f.seek(h.offset)
        head = f.read(8)
    assert head[:5] == b"hello" and torch.frombuffer(bytearray(head[6:8]), dtype=torch.float16).item() == 2.0
    with pytest.raises(ValueError, match="needs 20002 bytes"):
        pool.tensor_view(h, torch.float16, (10_001,))


def test_adding_grows_capacity_and_objects_go_to_the_primary_first(pool: DaxMemoryPool, tmp_path: Path) -> None:
    added = pool.add_arena(device(tmp_path / "b.img", 8 * MiB), 2 * MiB)
    assert added["is_primary"] is False and added["size_in_bytes"] == 2 * MiB and added["state"] == "active"
    assert pool.capacity_bytes == 6 * MiB
    handles = [pool.allocate(MiB) for _ in range(6)]
    assert [pool.arena_of(h) for h in handles if h is not None] == [str(tmp_path / "a.img")] * 4 + [str(tmp_path / "b.img")] * 2
    assert pool.allocate(MiB) is None
    report = pool.report_status()
    assert report["arena_count"] == 2 and report["used_bytes"] == 6 * MiB and report["free_bytes"] == 0
    assert [a["device_type"] for a in report["arenas"]] == ["file", "file"]


@pytest.mark.parametrize("alias", ["same", "dotted", "symlink", "hardlink"])
def test_a_device_already_mapped_is_refused_under_any_path(pool: DaxMemoryPool, tmp_path: Path, alias: str) -> None:
    target = tmp_path / "a.img"
    path = {
        "same": str(target),
        "dotted": str(tmp_path / "." / "a.img"),
        "symlink": str(tmp_path / "link.img"),
        "hardlink": str(tmp_path / "hard.img"),
    }[alias]
    if alias == "symlink":
        os.symlink(target, path)
    if alias == "hardlink":
        os.link(target, path)
    with pytest.raises(ConflictError, match="is already mapped"):
        pool.add_arena(path, MiB)
    assert len(pool.arena_statuses()) == 1


@pytest.mark.parametrize(
    ("setup", "size", "message"),
    [
        ("missing", MiB, "does not exist"),
        ("short", 8 * MiB, r"exceeds .* capacity \(4194304 bytes\)"),
        ("empty", MiB, r"capacity \(0 bytes\)"),
        ("dir", MiB, "neither a Device-DAX character device nor a regular file"),
        ("tiny", 100, "at least 4096 bytes"),
        ("blank", MiB, "non-empty"),
    ],
)
def test_devices_that_cannot_hold_an_arena_are_refused(
    pool: DaxMemoryPool, tmp_path: Path, setup: str, size: int, message: str
) -> None:
    path = str(tmp_path / "x.img")
    if setup == "short":
        device(tmp_path / "x.img", 4 * MiB)
    elif setup == "empty":
        device(tmp_path / "x.img", 0)
    elif setup == "dir":
        os.mkdir(path)
    elif setup == "tiny":
        device(tmp_path / "x.img")
    elif setup == "blank":
        path = " "
    with pytest.raises(ConflictError, match=message):
        pool.add_arena(path, size)
    assert len(pool.arena_statuses()) == 1 and pool.capacity_bytes == 4 * MiB
    if setup == "missing":
        assert not os.path.exists(path)  # never created


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_a_file_on_dev_shm_is_refused(pool: DaxMemoryPool) -> None:
    path = f"/dev/shm/l1dax_test_{os.getpid()}.img"
    try:
        device(Path(path), MiB)
        with pytest.raises(ConflictError, match="engines can name it"):
            pool.add_arena(path, MiB)
    finally:
        os.unlink(path)


def test_at_start_a_bad_device_is_a_config_error_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--l1-devdax-path: .* does not exist .*truncate -s"):
        create_dax_pool(str(tmp_path / "nope.img"), 0.25)
    with pytest.raises(ConfigError, match="smaller than one 4096-byte page"):
        create_dax_pool(device(tmp_path / "a.img"), 1e-9)


def test_draining_an_empty_arena_unmaps_it_at_once(pool: DaxMemoryPool, tmp_path: Path) -> None:
    path = device(tmp_path / "b.img")
    pool.add_arena(path, 4 * MiB)
    assert mapped(path)
    status = pool.drain_arena(path)
    assert status["state"] == "removed" and status["active_allocations"] == 0
    assert [a["device_path"] for a in pool.arena_statuses()] == [str(tmp_path / "a.img")]
    assert pool.arena_status(path)["state"] == "removed" and pool.capacity_bytes == 4 * MiB
    assert not mapped(path)
    with pytest.raises(NotFoundError):
        pool.drain_arena(path)
    # The same device can come back.
    assert pool.add_arena(path, MiB)["state"] == "active"


def test_a_draining_arena_takes_no_objects_and_goes_with_its_last_one(pool: DaxMemoryPool, tmp_path: Path) -> None:
    path = device(tmp_path / "b.img")
    pool.add_arena(path, 4 * MiB)
    full = [pool.allocate(MiB) for _ in range(4)]
    mine = [pool.allocate(MiB) for _ in range(2)]
    assert all(pool.arena_of(h) == path for h in mine if h is not None)
    status = pool.drain_arena(path)
    assert status["state"] == "draining" and status["active_allocations"] == 2 and status["used_bytes"] == 2 * MiB
    assert pool.capacity_bytes == 4 * MiB and pool.used_bytes == 4 * MiB and pool.draining_used_bytes == 2 * MiB
    assert pool.report_status()["draining_used_bytes"] == 2 * MiB
    assert pool.allocate(MiB) is None  # the primary is full and the draining arena takes nothing
    assert pool.drain_arena(path)["state"] == "draining"  # idempotent
    with pytest.raises(ConflictError, match="already mapped"):
        pool.add_arena(path, MiB)
    assert mine[0] is not None and mine[1] is not None
    pool.view(mine[0])[:3] = b"abc"  # still readable and writable while draining
    pool.free(mine[0])
    assert pool.arena_status(path)["state"] == "draining"
    pool.free(mine[1])
    assert pool.arena_status(path)["state"] == "removed" and len(pool.arena_statuses()) == 1
    assert pool.report_status()["arenas_removed_total"] == 1
    for h in full:
        assert h is not None
        pool.free(h)


def test_the_primary_cannot_be_drained_and_unknown_paths_are_not_found(pool: DaxMemoryPool, tmp_path: Path) -> None:
    with pytest.raises(ConflictError, match="cannot remove primary Device-DAX arena"):
        pool.drain_arena(str(tmp_path / "a.img"))
    with pytest.raises(NotFoundError, match="no Device-DAX arena mapped at"):
        pool.drain_arena(str(tmp_path / "zzz.img"))
    with pytest.raises(NotFoundError):
        pool.arena_status(str(tmp_path / "zzz.img"))


def test_handles_of_a_removed_arena_never_name_memory_of_a_newer_one(pool: DaxMemoryPool, tmp_path: Path) -> None:
    b = device(tmp_path / "b.img")
    pool.add_arena(b, 4 * MiB)
    while (h := pool.allocate(MiB)) is not None and pool.arena_of(h) != b:
        pass
    assert h is not None and pool.arena_of(h) == b
    old = h
    pool.drain_arena(b)
    pool.free(old)
    c = device(tmp_path / "c.img")
    pool.add_arena(c, 4 * MiB)
    new = pool.allocate(MiB)
    assert new is not None and pool.arena_of(new) == c and new.offset > old.offset
    with pytest.raises(ValueError):
        pool.free(old)
    with pytest.raises(ValueError):
        pool.view(old)


def test_a_view_alive_after_removal_keeps_its_memory(pool: DaxMemoryPool, tmp_path: Path) -> None:
    b = device(tmp_path / "b.img")
    pool.add_arena(b, 4 * MiB)
    pool.drain_arena(b)  # removed at once: nothing in it
    pool.add_arena(b, 4 * MiB)
    while (h := pool.allocate(MiB)) is not None and pool.arena_of(h) != b:
        pass
    assert h is not None
    view = pool.tensor_view(h)
    view.fill_(4)
    pool.drain_arena(b)
    pool.free(h)  # unmaps, except that `view` still exports the mapping
    assert pool.arena_status(b)["state"] == "removed"
    assert int(view.sum()) == 4 * MiB  # no segfault: the mapping lives as long as the view
    del view
    gc.collect()
    assert not mapped(b)


def test_owns_device_knows_every_path_of_a_mapped_device(pool: DaxMemoryPool, tmp_path: Path) -> None:
    os.symlink(tmp_path / "a.img", tmp_path / "alias.img")
    assert pool.owns_device(str(tmp_path / "alias.img")) and pool.owns_device(str(tmp_path / "a.img"))
    assert not pool.owns_device(str(tmp_path / "none.img")) and not pool.owns_device(device(tmp_path / "other.img"))


def test_close_unmaps_every_arena(tmp_path: Path) -> None:
    a, b = device(tmp_path / "a.img"), device(tmp_path / "b.img")
    pool = DaxMemoryPool(a, 4 * MiB)
    pool.add_arena(b, MiB)
    assert mapped(a) and mapped(b)
    pool.close()
    pool.close()
    assert not mapped(a) and not mapped(b) and pool.allocate(4096) is None
    with pytest.raises(ConflictError, match="closed"):
        pool.add_arena(device(tmp_path / "c.img"), MiB)


# ---------------------------------------------------------------------- truncation


def test_without_the_native_guard_a_short_file_fails_the_copy_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faultguard, "_native", None)
    pool = DaxMemoryPool(device(tmp_path / "a.img"), 4 * MiB)
    try:
        pool.check_intact()
        os.truncate(tmp_path / "a.img", MiB)
        assert pool.needs_recovery()
        with pytest.raises(SegmentFaultError, match="truncated"):
            pool.check_intact()
        assert pool.recover() == MiB
        pool.check_intact()
        assert not pool.needs_recovery() and os.path.getsize(tmp_path / "a.img") == 4 * MiB
    finally:
        pool.close()


@pytest.mark.skipif(not native_guard(), reason="the native guard was not built (no C compiler)")
def test_a_truncated_arena_costs_a_copy_not_the_process(pool: DaxMemoryPool, tmp_path: Path) -> None:
    b = device(tmp_path / "b.img")
    pool.add_arena(b, 4 * MiB)
    handles = [pool.allocate(MiB) for _ in range(8)]
    assert all(h is not None for h in handles)
    in_b = [h for h in handles if h is not None and pool.arena_of(h) == b]
    for h in in_b:
        pool.tensor_view(h).fill_(6)
    before = pool.fault_count()
    os.truncate(b, 0)
    assert pool.needs_recovery()
    copied = pool.tensor_view(in_b[-1]).clone()  # SIGBUS without the guard
    assert pool.fault_count() > before and int(copied.max()) == 0
    lost = pool.recover()
    base = min(h.offset for h in in_b)
    assert lost == base  # everything of the truncated arena, nothing of the primary
    assert not pool.needs_recovery() and os.path.getsize(b) == 4 * MiB
    pool.tensor_view(in_b[0]).fill_(9)  # mapped again: writes reach the file
    with open(b, "rb") as f:
        f.seek(in_b[0].offset - 4 * MiB)  # arena b starts where the primary's 4 MiB end
        assert f.read(4) == b"\x09" * 4
    report = pool.report_status()
    assert report["truncation_recoveries_total"] == 1 and report["truncation_lost_bytes_total"] == 4 * MiB
