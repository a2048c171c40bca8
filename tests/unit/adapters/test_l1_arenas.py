"""L1Arenas over a real DaxMemoryPool and L1Manager: removal drains objects (waiting for locks up to
a deadline, `force`), the periodic step finishes a drain, and one device never serves two tiers."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lmcache_adapters.l2.dax import DaxL2Adapter
from lmcache_adapters.memory.dax_pool import DaxMemoryPool
from lmcache_adapters.testing.memory_contract import device_file
from lmcache_core.cache_ops import CacheOperations
from lmcache_core.cache_ops.reconfigure import L1_NOT_DAX
from lmcache_core.clock import ManualClock
from lmcache_core.errors import ConfigError, ConflictError, InvalidRequestError
from lmcache_core.keys import ObjectKey
from lmcache_core.l1 import L1Listener, L1Manager, OpResult
from lmcache_core.l1.arenas import REMOVAL_REASON, L1Arenas
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

MiB = 1 << 20


OK = OpResult.SUCCESS


def device(path: Path, size: int = 4 * MiB) -> str:
    return device_file(path, size)


def key(i: int) -> ObjectKey:
    return ObjectKey(chunk_hash=i.to_bytes(8, "big"), model_name="m", kv_rank=0)


class Removed(L1Listener):
    def __init__(self) -> None:
        self.events: list[tuple[list[ObjectKey], str]] = []

    def on_l1_keys_removed(self, keys: Sequence[ObjectKey], sizes: Sequence[int], reason: str) -> None:
        self.events.append((list(keys), reason))


class Stack:
    """A DAX pool (4 MiB primary), its L1 manager on a manual clock, and L1Arenas whose waits
    advance that clock (and run `on_wait` hooks: what another thread would do meanwhile)."""

    def __init__(self, tmp: Path, others: Any = ()) -> None:
        self.tmp = tmp
        self.clock = ManualClock()
        self.pool = DaxMemoryPool(device(tmp / "a.img"), 4 * MiB)
        self.l1 = L1Manager(self.pool, clock=self.clock, write_ttl_seconds=60, read_ttl_seconds=30)
        self.removed = Removed()
        self.l1.add_listener(self.removed)
        self.waits: list[float] = []
        self.on_wait: list[Any] = []
        self.arenas = L1Arenas(self.l1, self.pool, clock=self.clock, others=lambda: list(others), wait=self.wait)
        self.b = device(tmp / "b.img")

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.advance(seconds)
        if self.on_wait:
            self.on_wait.pop(0)()

    def fill_primary(self, start: int = 1000) -> list[ObjectKey]:
        keys = [key(start + i) for i in range(4)]
        assert [r for r, _ in self.l1.reserve_write(keys, [MiB] * 4)] == [OK] * 4
        self.l1.finish_write(keys)
        return keys

    def store_in_b(self, n: int, start: int = 0) -> list[ObjectKey]:
        """`n` finished 1 MiB objects in arena b (the primary is filled first)."""
        self.pool.add_arena(self.b, 4 * MiB)
        self.fill_primary()
        keys = [key(start + i) for i in range(n)]
        results = self.l1.reserve_write(keys, [MiB] * n)
        assert all(r == OK and self.pool.arena_of(h) == self.b for r, h in results if h is not None)
        self.l1.finish_write(keys)
        return keys


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.pool.close()


def test_unlocked_objects_leave_at_once_pinned_and_temporary_ones_too(stack: Stack) -> None:
    keys = stack.store_in_b(2)
    assert stack.l1.pin([keys[0]]) == [OK]
    temp = key(77)
    assert stack.l1.reserve_write([temp], [MiB], temporary=True)[0][0] == OK
    stack.l1.finish_write([temp])
    status = stack.arenas.remove(stack.b)
    assert status["state"] == "removed" and status["active_allocations"] == 0
    assert not any(stack.l1.contains(k) for k in [*keys, temp])
    assert all(stack.l1.contains(key(1000 + i)) for i in range(4))  # the primary's objects stay
    assert sorted((sorted(k), r) for k, r in stack.removed.events) == [(sorted([*keys, temp]), REMOVAL_REASON)]
    assert stack.waits == [] and stack.arenas.objects_removed_total == 3
    assert stack.pool.capacity_bytes == 4 * MiB


def test_a_locked_object_is_waited_for_until_it_unlocks(stack: Stack) -> None:
    keys = stack.store_in_b(2)
    assert stack.l1.reserve_read([keys[1]])[0][0] == OK  # a copy in flight
    stack.on_wait = [lambda: None, lambda: stack.l1.finish_read([keys[1]])]
    status = stack.arenas.remove(stack.b, timeout_seconds=5)
    assert status["state"] == "removed" and len(stack.waits) == 2
    assert not stack.l1.contains(keys[1])


def test_at_the_deadline_locked_objects_stay_and_the_periodic_step_finishes(stack: Stack) -> None:
    keys = stack.store_in_b(3)
    writing = key(99)
    stack.l1.delete([keys[2]])
    assert stack.l1.reserve_write([writing], [MiB])[0][0] == OK  # a write in flight, in arena b
    assert stack.l1.reserve_read([keys[0]], promise=True)[0][0] == OK  # a lookup's promise
    status = stack.arenas.remove(stack.b, timeout_seconds=1)
    assert status["state"] == "draining" and status["active_allocations"] == 2
    assert stack.clock.monotonic() >= 1000.0 + 1  # it waited up to the deadline
    assert stack.l1.contains(keys[0]) and not stack.l1.contains(keys[1])
    assert stack.arenas.report_status()["draining"] == [stack.b]
    assert stack.pool.allocate(MiB) is None  # nothing new lands in a draining arena
    assert stack.arenas.progress() == {"draining": 1, "removed": 0}
    stack.l1.finish_write([writing])
    stack.l1.finish_read([keys[0]], promise=True)
    assert stack.arenas.progress() == {"draining": 0, "removed": 2}
    assert stack.pool.arena_status(stack.b)["state"] == "removed"
    assert stack.arenas.progress() is None and stack.arenas.report_status()["draining"] == []


def test_force_drops_promises_at_once_and_waits_only_for_copies_in_flight(stack: Stack) -> None:
    keys = stack.store_in_b(2)
    assert stack.l1.reserve_read([keys[0]], promise=True)[0][0] == OK
    copying = stack.l1.reserve_read([keys[1]])[0][1]
    status = stack.arenas.remove(stack.b, force=True, timeout_seconds=0)
    # Both left L1; the copy in flight keeps its memory (and the arena mapped) until it ends.
    assert not stack.l1.contains(keys[0]) and not stack.l1.contains(keys[1])
    assert status["state"] == "draining" and status["active_allocations"] == 1
    assert stack.l1.finish_read([keys[1]], handles=[copying]) == [OpResult.KEY_NOT_EXIST]
    assert stack.pool.arena_status(stack.b)["state"] == "removed"


def test_force_with_nothing_in_flight_removes_at_once(stack: Stack) -> None:
    keys = stack.store_in_b(2)
    assert stack.l1.reserve_read(keys, promise=True)[0][0] == OK
    assert stack.arenas.remove(stack.b, force=True, timeout_seconds=0)["state"] == "removed"


def test_bad_timeouts_are_refused_before_anything_changes(stack: Stack) -> None:
    stack.pool.add_arena(stack.b, 4 * MiB)
    for bad in (-1, 301, True):
        with pytest.raises(InvalidRequestError, match="timeout_seconds"):
            stack.arenas.remove(stack.b, timeout_seconds=bad)
    assert stack.pool.arena_status(stack.b)["state"] == "active"


def test_a_device_an_l2_adapter_maps_cannot_be_added(tmp_path: Path) -> None:
    l2 = DaxL2Adapter([{"path": str(tmp_path / "l2.img"), "size": 4096 + 8 * 8192}], 8192, preallocate=False)
    s = Stack(tmp_path, others=[("dax-l2", l2)])
    try:
        with pytest.raises(ConflictError, match=r"already mapped by L2 adapter\(s\) \(dax-l2\)"):
            s.arenas.add(str(tmp_path / "l2.img"), 4096)
        assert s.arenas.add(s.b, MiB)["state"] == "active"
    finally:
        s.pool.close()
        l2.close()


# ---------------------------------------------------------------------- wiring


def test_the_storage_manager_wires_arenas_and_their_drain_thread(tmp_path: Path) -> None:
    services = in_memory_stack(memory_pool=DaxMemoryPool(device(tmp_path / "a.img"), 4 * MiB))
    try:
        storage = services.storage
        assert storage is not None and storage.l1_arenas is not None
        assert "l1-arena-drain" in [t.name for t in storage.periodic_threads()]
        status = storage.report_status()
        assert status["l1_capacity_bytes_by_backend"] == {"devdax": 4 * MiB}
        assert status["l1_arenas"]["draining"] == [] and status["l1_manager"]["pool"]["backend"] == "devdax"
    finally:
        services.close()


def test_shared_memory_l1_has_no_arenas(tmp_path: Path) -> None:
    services = in_memory_stack()
    try:
        assert services.storage is not None and services.storage.l1_arenas is None
        assert services.engine is not None
        with pytest.raises(ConflictError, match=L1_NOT_DAX.replace("(", r"\(").replace(")", r"\)")):
            CacheOperations.for_engine(services.engine).reconfigure.l1_arenas()
    finally:
        services.close()


def test_one_device_never_serves_both_tiers(tmp_path: Path) -> None:
    l1_path = device(tmp_path / "a.img")
    l2 = json.dumps({"type": "dax", "devices": [{"path": l1_path, "size": 4 * MiB}], "slot_bytes": 8192, "preallocate": False})
    with pytest.raises(ConfigError, match="one device cannot hold both tiers"):
        in_memory_stack(ServerConfig(l2_adapters=(l2,)), memory_pool=DaxMemoryPool(l1_path, 4 * MiB))
    # At run time: an L2 device that is an L1 arena is refused.
    other = json.dumps({"type": "dax", "devices": [{"path": str(tmp_path / "l2.img"), "size": 4096 + 8 * 8192}],
                        "slot_bytes": 8192, "preallocate": False})
    services = in_memory_stack(ServerConfig(l2_adapters=(other,)), memory_pool=DaxMemoryPool(l1_path, 4 * MiB))
    try:
        assert services.engine is not None
        ops = CacheOperations.for_engine(services.engine).reconfigure
        target = ops.resolve("dax", 0)
        with pytest.raises(ConflictError, match="mapped by the L1 pool"):
            ops.apply(target, "add", {"device_path": l1_path, "size": 4 * MiB})
    finally:
        services.close()
