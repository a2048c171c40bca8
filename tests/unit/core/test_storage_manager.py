"""StorageManager: L1 write-back to L2, prefetch from L2, L2 eviction, status."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from lmcache_adapters.l2.mock import MockL2Adapter
from lmcache_core.clock import ManualClock
from lmcache_core.eviction import make_policy
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.l1.listener import L1Listener
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult
from lmcache_core.l2.listener import L2Listener
from lmcache_core.quota import QuotaManager
from lmcache_core.storage_manager import StorageManager
from lmcache_core.testing import poll_until
from lmcache_core.testing.memory import BytearrayMemoryPool

OBJ = 8192


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(i.to_bytes(32, "big"), "test-model", kv_rank_for(1, 0), 0, salt)



def put(l1: L1Manager, keys: list[ObjectKey], fill: Callable[[int], bytes] | None = None) -> None:
    results = l1.reserve_write(keys, [OBJ] * len(keys))
    assert all(r is OpResult.SUCCESS for r, _ in results), results
    for k in keys:
        view = l1.view(k)
        assert view is not None
        view[:] = (fill or payload)(int.from_bytes(k.chunk_hash, "big"))
    assert all(r is OpResult.SUCCESS for r in l1.finish_write(keys))


def payload(i: int) -> bytes:
    return (i.to_bytes(8, "big") * (OBJ // 8))[:OBJ]


@pytest.fixture
def make_manager() -> Iterator[Callable[..., StorageManager]]:
    made: list[StorageManager] = []

    def factory(
        adapters: list[Any] | None = None,
        *,
        l1_bytes: int = 64 * OBJ,
        store_policy: str = "default",
        quotas: QuotaManager | None = None,
    ) -> StorageManager:
        clock = ManualClock()
        quotas = quotas or QuotaManager()
        l1 = L1Manager(BytearrayMemoryPool(l1_bytes), clock=clock)
        specs = adapters if adapters is not None else [("mock", MockL2Adapter())]
        sm = StorageManager(
            l1,
            policy=make_policy("LRU", quotas),
            quotas=quotas,
            l2_adapters=specs,
            clock=clock,
            eviction_interval_seconds=3600,
            l2_store_policy=store_policy,
            l2_policy_factory=lambda name: make_policy(name, quotas),
        )
        sm.start()
        made.append(sm)
        return sm

    yield factory
    for sm in made:
        sm.close(drain_timeout=2)


def l2_has(adapter: MockL2Adapter, keys: list[ObjectKey]) -> list[bool]:
    bitmap = adapter.submit_lookup_and_lock(keys).result(timeout=5)
    adapter.unlock([k for k, hit in zip(keys, bitmap, strict=True) if hit])
    return bitmap


def test_finished_writes_are_written_back_to_every_adapter(make_manager: Any) -> None:
    a, b = MockL2Adapter(), MockL2Adapter()
    sm = make_manager([("a", a), ("b", b)])
    keys = [key(i) for i in range(10)]
    put(sm.l1, keys)
    assert sm.store.drain(5)
    assert l2_has(a, keys) == [True] * 10 and l2_has(b, keys) == [True] * 10
    buf = bytearray(OBJ)
    assert b.submit_load([keys[3]], [memoryview(buf)]).result(timeout=5) == [True]
    assert bytes(buf) == payload(3)
    # the write-back released its read locks: the objects can be deleted
    assert sm.l1.delete(keys) == [OpResult.SUCCESS] * 10
    status = sm.report_status()["store_controller"]
    assert status["adapters"]["0:a"]["completed"] == 10 and status["queue_size"] == 0


def test_a_write_back_is_not_a_hit(make_manager: Any) -> None:
    # The write-back read-locks each object to copy it, but that is the server's own read: the
    # eviction policy's recency and the fleet's access events must hear only clients' hits.
    class Hits(L1Listener):
        def __init__(self) -> None:
            self.keys: list[ObjectKey] = []

        def on_l1_keys_read_reserved(self, keys: Sequence[ObjectKey]) -> None:
            self.keys.extend(keys)

    sm = make_manager([("a", MockL2Adapter())])
    hits = Hits()
    sm.l1.add_listener(hits)
    keys = [key(i) for i in range(6)]
    put(sm.l1, keys)
    assert sm.store.drain(5)
    assert sm.report_status()["store_controller"]["adapters"]["0:a"]["completed"] == 6
    assert hits.keys == []
    assert [r for r, _ in sm.l1.reserve_read(keys[:2])] == [OpResult.SUCCESS] * 2  # a client's read is one
    assert hits.keys == keys[:2]


def test_skip_l1_drops_objects_once_stored(make_manager: Any) -> None:
    a = MockL2Adapter()
    sm = make_manager([("a", a)], store_policy="skip_l1")
    keys = [key(i) for i in range(4)]
    put(sm.l1, keys)
    assert sm.store.drain(5)
    poll_until(lambda: sm.l1.object_count() == 0)
    assert l2_has(a, keys) == [True] * 4


def test_a_failing_adapter_does_not_block_l1_or_the_other_adapter(make_manager: Any) -> None:
    class Broken(MockL2Adapter):
        def submit_store(self, keys: Any, payloads: Any) -> Any:
            raise OSError("disk on fire")

    good = MockL2Adapter()
    sm = make_manager([("broken", Broken()), ("good", good)])
    keys = [key(i) for i in range(3)]
    put(sm.l1, keys)
    assert sm.store.drain(5)
    assert l2_has(good, keys) == [True] * 3
    status = sm.report_status()["store_controller"]
    assert status["adapters"]["0:broken"]["failed"] == 3
    assert "disk on fire" in status["last_error"]
    assert sm.l1.delete(keys) == [OpResult.SUCCESS] * 3  # no read lock leaked


def test_prefetch_loads_the_leading_run_of_l2_hits(make_manager: Any) -> None:
    a = MockL2Adapter()
    keys = [key(i) for i in range(6)]
    for k in keys[:4]:
        assert a.submit_store([k], [memoryview(payload(int.from_bytes(k.chunk_hash, "big")))]).result(5) == [True]
    # key 5 is in L2 but key 4 is not: only the leading run (0..3) counts
    assert a.submit_store([keys[5]], [memoryview(payload(5))]).result(5) == [True]
    sm = make_manager([("a", a)])
    job = sm.prefetch.submit(keys, object_size=OBJ)
    assert job.wait(5)
    assert job.l2_hit_count == 4 and job.loaded_count == 4
    for k in keys[:4]:
        view = sm.l1.view(k)
        assert view is not None and bytes(view) == payload(int.from_bytes(k.chunk_hash, "big"))
    # loaded objects are read-locked for the retrieve, and not written back to L2 again
    assert sm.l1.delete(keys[:1]) == [OpResult.KEY_IS_LOCKED]
    assert sm.store.drain(2)
    assert sm.report_status()["store_controller"]["adapters"]["0:a"]["submitted"] == 0
    # temporary: freed after the last read
    sm.l1.finish_read(keys[:4], promise=True)  # the lookup's promises
    assert sm.l1.object_count() == 0
    # the L2 locks were released: L2 can delete them now
    assert a.delete(keys[:4]) == [True] * 4


def test_prefetch_counts_whole_groups_only(make_manager: Any) -> None:
    a = MockL2Adapter()
    keys = [key(i) for i in range(5)]
    for k in keys:
        a.submit_store([k], [memoryview(payload(1))]).result(5)
    sm = make_manager([("a", a)])
    job = sm.prefetch.submit(keys, object_size=OBJ, group_size=2)
    assert job.wait(5) and job.loaded_count == 4
    assert sm.l1.object_count() == 4


def test_lowest_index_adapter_wins(make_manager: Any) -> None:
    first, second = MockL2Adapter(), MockL2Adapter()
    k = key(1)
    first.submit_store([k], [memoryview(payload(111))]).result(5)
    second.submit_store([k], [memoryview(payload(222))]).result(5)
    sm = make_manager([("first", first), ("second", second)])
    job = sm.prefetch.submit([k], object_size=OBJ)
    assert job.wait(5) and job.loaded_count == 1
    view = sm.l1.view(k)
    assert view is not None and bytes(view) == payload(111)
    assert second.delete([k]) == [True]  # the loser's lock was released at once


def test_prefetch_shrinks_its_plan_when_l1_is_full(make_manager: Any) -> None:
    a = MockL2Adapter()
    keys = [key(i) for i in range(8)]
    for k in keys:
        a.submit_store([k], [memoryview(payload(1))]).result(5)
    sm = make_manager([("a", a)], l1_bytes=5 * OBJ)
    job = sm.prefetch.submit(keys, object_size=OBJ)
    assert job.wait(5)
    assert job.l2_hit_count == 8
    assert 0 < job.loaded_count <= 5
    assert sm.l1.object_count() == job.loaded_count


def test_a_corrupt_or_failed_load_is_never_a_hit(make_manager: Any) -> None:
    class FailSecond(MockL2Adapter):
        def submit_load(self, keys: Any, buffers: Any) -> Any:
            fut = super().submit_load(keys, buffers)
            out = fut.result(5)
            out = [ok and k != key(1) for k, ok in zip(keys, out, strict=True)]
            from concurrent.futures import Future

            f: Future[list[bool]] = Future()
            f.set_result(out)
            return f

    a = FailSecond()
    keys = [key(i) for i in range(3)]
    for k in keys:
        a.submit_store([k], [memoryview(payload(1))]).result(5)
    sm = make_manager([("a", a)])
    job = sm.prefetch.submit(keys, object_size=OBJ)
    assert job.wait(5) and job.loaded_count == 1
    assert sm.l1.contains(keys[0]) and not sm.l1.contains(keys[1]) and not sm.l1.contains(keys[2])


def test_no_adapter_means_no_prefetch_controller(make_manager: Any) -> None:
    sm = make_manager([])
    assert sm.prefetch is None
    assert "prefetch_controller" not in sm.report_status()


def test_isolated_lru_on_l2_evicts_a_salt_without_quota(make_manager: Any) -> None:
    quotas = QuotaManager()
    quotas.set("paying", 100 * OBJ)
    a = MockL2Adapter()
    sm = make_manager([("a", a, {"policy": "IsolatedLRU"})], quotas=quotas)
    paying = [key(i, "paying") for i in range(4)]
    free = [key(100 + i, "free") for i in range(4)]
    put(sm.l1, paying + free)
    assert sm.store.drain(5)
    for _ in range(3):
        sm.l2_eviction.run_cycle()
    assert l2_has(a, free) == [False] * 4
    assert l2_has(a, paying) == [True] * 4
    report = sm.report_status()["l2_eviction_controller"]["adapters"]["0:a"]
    assert report["evicted_objects"] == 4 and report["policy"] == "IsolatedLRU"


def test_lru_on_l2_evicts_above_the_watermark(make_manager: Any) -> None:
    a = MockL2Adapter(capacity_bytes=10 * OBJ)
    sm = make_manager([("a", a, {"policy": "LRU", "trigger_watermark": 0.5, "eviction_ratio": 0.3})])
    keys = [key(i) for i in range(8)]
    put(sm.l1, keys)
    assert sm.store.drain(5)
    sm.l2_eviction.run_cycle()
    present = l2_has(a, keys)
    assert present[:3] == [False] * 3 and present[3:] == [True] * 5


def test_l2_eviction_settings_are_validated(make_manager: Any) -> None:
    from lmcache_core.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown field.*colour"):
        make_manager([("a", MockL2Adapter(), {"colour": 1})])
    with pytest.raises(ConfigError, match="trigger_watermark"):
        make_manager([("a", MockL2Adapter(), {"trigger_watermark": 2})])


def test_status_tree_is_complete_and_serialisable(make_manager: Any) -> None:
    sm = make_manager()
    status = sm.report_status()
    json.dumps(status)
    assert status["is_healthy"] is True
    for child in ("l1_manager", "eviction_controller", "store_controller", "prefetch_controller"):
        assert status[child]["is_healthy"] is True, child
    (adapter,) = status["l2_adapters"]
    assert adapter["is_healthy"] is True and adapter["type"] == "MockL2Adapter" and adapter["index"] == 0


def test_close_drains_pending_write_backs(make_manager: Any) -> None:
    a = MockL2Adapter(bandwidth_gbps=0.05)  # slow: 8 KiB objects take ~0.16 ms each
    sm = make_manager([("a", a)])
    keys = [key(i) for i in range(20)]
    put(sm.l1, keys)
    sm.close(drain_timeout=10)
    assert a.report_status()["stored_object_count"] == 20


def test_delete_from_l2_tells_the_eviction_policy(make_manager: Any) -> None:
    a = MockL2Adapter()
    sm = make_manager([("a", a, {"policy": "LRU"})])
    keys = [key(i) for i in range(3)]
    put(sm.l1, keys)
    assert sm.store.drain(5)
    entry = sm.find_adapter(None)
    assert sm.delete_from_l2(entry, keys[:2]) == [True, True]
    assert sm.report_status()["l2_eviction_controller"]["adapters"]["0:a"]["tracked_keys"] == 1


def test_a_chunk_back_in_l1_does_not_end_the_l2_prefix(make_manager: Any) -> None:
    a = MockL2Adapter()
    keys = [key(i) for i in range(4)]
    for k in (keys[0], keys[1], keys[3]):  # keys[2] is not in L2 ...
        a.submit_store([k], [memoryview(payload(int.from_bytes(k.chunk_hash, "big")))]).result(5)
    sm = make_manager([("a", a)])
    put(sm.l1, [keys[2]])  # ... but it is in L1
    assert sm.store.drain(5)
    a.delete([keys[2]])  # written back by the store controller: remove it from L2 again
    job = sm.prefetch.submit(keys, object_size=OBJ)
    assert job.wait(5) and job.loaded_count == 4
    for k in keys:
        view = sm.l1.view(k)
        assert view is not None and bytes(view) == payload(int.from_bytes(k.chunk_hash, "big"))
    sm.l1.finish_read(keys, promise=True)
    assert sm.l1.object_count() == 1  # the three temporaries are freed, the L1 object stays


class _Recorder(L2Listener):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, list[ObjectKey], Any]] = []

    def on_l2_keys_stored(self, entry: Any, keys: Any, sizes: Any) -> None:
        self.events.append(("stored", entry.name, list(keys), list(sizes)))

    def on_l2_keys_loaded(self, entry: Any, keys: Any) -> None:
        self.events.append(("loaded", entry.name, list(keys), None))

    def on_l2_keys_removed(self, entry: Any, keys: Any, reason: str) -> None:
        self.events.append(("removed", entry.name, list(keys), reason))


def test_l2_listeners_see_stores_loads_deletes_and_evictions(make_manager: Any) -> None:
    a = MockL2Adapter(capacity_bytes=10 * OBJ)
    sm = make_manager([("a", a, {"policy": "LRU", "trigger_watermark": 0.5, "eviction_ratio": 0.3}, True)])
    seen = _Recorder()
    sm.add_l2_listener(seen)
    assert sm.find_adapter(None).shared is True and sm.find_adapter(None).backend == "mock"
    keys = [key(i) for i in range(8)]
    put(sm.l1, keys)
    assert sm.store.drain(5)
    stored = [k for kind, _, ks, _ in seen.events if kind == "stored" for k in ks]
    assert sorted(stored) == sorted(keys)
    assert all(sizes == [OBJ] * len(ks) for kind, _, ks, sizes in seen.events if kind == "stored")
    # The adapter's own eviction: the three coldest, reason "evict".
    sm.l2_eviction.run_cycle()
    assert [(k, ks, r) for k, _, ks, r in seen.events if k == "removed"] == [("removed", keys[:3], "evict")]
    # An operator's delete: reason "delete", only the keys really deleted.
    sm.l1.delete(keys)
    assert sm.delete_from_l2(sm.find_adapter(None), [keys[3], keys[0]]) == [True, False]
    assert seen.events[-1] == ("removed", "a", [keys[3]], "delete")
    # A prefetch that loads from L2.
    job = sm.prefetch.submit(keys[4:6], object_size=OBJ)
    assert job.wait(5) and job.loaded_count == 2
    assert ("loaded", "a", keys[4:6], None) in seen.events
    sm.l1.finish_read(keys[4:6], promise=True)


def test_a_failing_l2_listener_changes_nothing_for_the_others(make_manager: Any) -> None:
    class Broken(L2Listener):
        def on_l2_keys_stored(self, entry: Any, keys: Any, sizes: Any) -> None:
            raise RuntimeError("boom")

    a = MockL2Adapter()
    sm = make_manager([("a", a)])
    seen = _Recorder()
    sm.add_l2_listener(Broken())
    sm.add_l2_listener(seen)
    put(sm.l1, [key(1)])
    assert sm.store.drain(5)
    assert l2_has(a, [key(1)]) == [True]
    assert [e[0] for e in seen.events] == ["stored"]
