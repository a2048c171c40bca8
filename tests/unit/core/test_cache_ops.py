"""The operation services behind both generations of admin routes: one delete spanning L1 and L2,
clears, checksums over registered KV caches, warm prefetches from L2, runtime reconfiguration."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from lmcache_adapters.l2.fs import FSL2Adapter
from lmcache_adapters.l2.mock import MockL2Adapter
from lmcache_core.cache_ops import CacheOperations, ClearService, ObjectService, Tier
from lmcache_core.cache_ops.checksums import ChecksumService
from lmcache_core.cache_ops.prefetch import COMPLETED, PENDING, WarmPrefetchService
from lmcache_core.clock import ManualClock
from lmcache_core.engine import CacheEngine
from lmcache_core.errors import (
    InvalidKeyError,
    InvalidRequestError,
    NotFoundError,
    NotSupportedError,
    UnavailableError,
)
from lmcache_core.eviction import make_policy
from lmcache_core.hashing import TokenHasher
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.kv_caches import KVCacheRegistry
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult
from lmcache_core.quota import QuotaManager
from lmcache_core.storage_manager import StorageManager
from lmcache_core.testing import poll_until
from lmcache_core.testing.memory import BytearrayMemoryPool

OBJ = 4096
CHUNK = 16
MODEL = "m"


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(i.to_bytes(32, "big"), MODEL, kv_rank_for(1, 0), 0, salt)



def put_l1(l1: L1Manager, keys: Sequence[ObjectKey], size: int = OBJ, l2: MockL2Adapter | None = None) -> None:
    """Write `keys` to L1; with the stack's `l2`, wait for their write-back to finish there (it
    read-locks each object while it copies it)."""
    results = l1.reserve_write(list(keys), [size] * len(keys))
    assert all(r is OpResult.SUCCESS for r, _ in results), results
    for k in keys:
        view = l1.view(k)
        assert view is not None
        view[:] = bytes([k.chunk_hash[-1]]) * size
    assert all(r is OpResult.SUCCESS for r in l1.finish_write(list(keys)))
    if l2 is not None:
        poll_until(lambda: all(in_l2(l2, keys)))
        poll_until(lambda: not any(info is not None and info.locked for info in l1.inspect(list(keys))))


def in_l2(adapter: MockL2Adapter, keys: Sequence[ObjectKey]) -> list[bool]:
    """Which keys the adapter holds (a lookup whose locks are released at once)."""
    hits = adapter.submit_lookup_and_lock(list(keys)).result(timeout=5)
    adapter.unlock([k for k, hit in zip(keys, hits, strict=True) if hit])
    return hits


def put_l2(adapter: MockL2Adapter, keys: Sequence[ObjectKey], size: int = OBJ) -> None:
    blobs = [memoryview(bytes([k.chunk_hash[-1]]) * size) for k in keys]
    assert adapter.submit_store(list(keys), blobs).result(timeout=5) == [True] * len(keys)


class FakeSource:
    """A KVCacheSource: one model's object size and checksums that echo their arguments."""

    def __init__(self, object_size: int = OBJ, world_size: int = 1) -> None:
        self.object_size_ = object_size
        self.world_size = world_size
        self.calls: list[tuple[list[int], int, bool]] = []

    def object_size(self, model_name: str, world_size: int) -> int | None:
        return self.object_size_ if (model_name, world_size) == (MODEL, self.world_size) else None

    def kv_cache(self, instance_id: int) -> Any:
        if instance_id != 7:
            return None
        source = self

        class Cache:
            def checksums(self, block_ids: Sequence[int], chunk_blocks: int, *, layerwise: bool) -> Any:
                source.calls.append((list(block_ids), chunk_blocks, layerwise))
                if max(block_ids) >= 100:
                    raise InvalidRequestError("Invalid block_ids format: index out of range")
                return [f"md5-{i}" for i in range(-(-len(block_ids) // chunk_blocks))]

        return Cache()


@pytest.fixture
def stack() -> Iterator[Callable[..., tuple[StorageManager, MockL2Adapter | None, CacheOperations]]]:
    made: list[StorageManager] = []

    def build(*, with_l2: bool = True, source: FakeSource | None = None) -> tuple[StorageManager, MockL2Adapter | None, CacheOperations]:
        clock = ManualClock()
        quotas = QuotaManager()
        l1 = L1Manager(BytearrayMemoryPool(64 * OBJ), clock=clock)
        adapter = MockL2Adapter() if with_l2 else None
        sm = StorageManager(
            l1,
            policy=make_policy("LRU", quotas),
            quotas=quotas,
            l2_adapters=[("mock", adapter)] if adapter is not None else [],
            clock=clock,
            eviction_interval_seconds=3600,
        )
        sm.start()
        made.append(sm)
        engine = CacheEngine(sm, TokenHasher("blake3", CHUNK), clock=clock)
        if source is not None:
            engine.kv_caches.add_source(source)
        return sm, adapter, CacheOperations.for_engine(engine)

    yield build
    for sm in made:
        sm.close()


# --------------------------------------------------------------------------- delete


def test_one_delete_spans_l1_and_l2(stack: Any) -> None:
    sm, l2, ops = stack()
    keys = [key(1), key(2)]
    put_l1(sm.l1, keys, l2=l2)
    outcome = ops.objects.delete(keys, tier=Tier.ALL)
    assert (outcome.l1_deleted, outcome.l2_deleted, outcome.l1_skipped, outcome.ok) == (2, 2, 0, True)
    assert outcome.deleted == 4
    assert sm.l1.object_count() == 0 and in_l2(l2, keys) == [False, False]


def test_delete_is_idempotent(stack: Any) -> None:
    sm, l2, ops = stack()
    put_l1(sm.l1, [key(1)], l2=l2)
    assert ops.objects.delete([key(1)], tier=Tier.ALL).deleted == 2
    again = ops.objects.delete([key(1)], tier=Tier.ALL)
    assert (again.deleted, again.l1_skipped, again.ok) == (0, 0, True)


@pytest.mark.parametrize("tier", [Tier.L1, Tier.L2])
def test_a_tier_alone_leaves_the_other(stack: Any, tier: Tier) -> None:
    sm, l2, ops = stack()
    put_l1(sm.l1, [key(1)], l2=l2)
    assert ops.objects.delete([key(1)], tier=tier).deleted == 1
    assert sm.l1.contains(key(1)) is (tier is Tier.L2)
    assert in_l2(l2, [key(1)]) == [tier is Tier.L1]


def test_locked_and_pinned_l1_objects_stay_unless_forced(stack: Any) -> None:
    sm, _l2, ops = stack()
    locked, pinned, free = key(1), key(2), key(3)
    put_l1(sm.l1, [locked, pinned, free], l2=_l2)
    assert sm.l1.reserve_read([locked])[0][0] is OpResult.SUCCESS  # an engine is reading it
    sm.l1.pin([pinned], ttl_seconds=None)
    outcome = ops.objects.delete([locked, pinned, free], tier=Tier.L1)
    assert (outcome.l1_deleted, outcome.l1_skipped) == (1, 2)
    assert sm.l1.contains(locked) and sm.l1.contains(pinned) and not sm.l1.contains(free)

    forced = ops.objects.delete([locked, pinned], tier=Tier.L1, force=True)
    assert (forced.l1_deleted, forced.l1_skipped) == (2, 0)
    assert not sm.l1.contains(locked) and not sm.l1.contains(pinned)
    # The reader's memory is not reused while it still reads: freed when its lock goes.
    used = sm.l1.usage_bytes()[0]
    assert used >= OBJ
    sm.l1.finish_read([locked])
    assert sm.l1.usage_bytes()[0] == used - OBJ


def test_a_bad_adapter_selector_deletes_nothing(stack: Any) -> None:
    sm, l2, ops = stack()
    put_l1(sm.l1, [key(1)], l2=l2)
    with pytest.raises(NotFoundError):
        ops.objects.delete([key(1)], tier=Tier.ALL, adapter="nope")
    assert sm.l1.contains(key(1))
    # An L1-only delete does not look at adapters at all.
    assert ops.objects.delete([key(1)], tier=Tier.L1, adapter="nope").l1_deleted == 1


def test_no_l2_is_unavailable_for_l2_tiers_only(stack: Any) -> None:
    sm, _, ops = stack(with_l2=False)
    put_l1(sm.l1, [key(1)])
    for tier in (Tier.L2, Tier.ALL):
        with pytest.raises(UnavailableError, match="no L2 adapters configured"):
            ops.objects.delete([key(1)], tier=tier)
    assert ops.objects.delete([key(1)], tier=Tier.L1).deleted == 1


def test_the_batch_is_capped(stack: Any) -> None:
    _, _, ops = stack()
    with pytest.raises(InvalidRequestError, match=r"limit=10000, got=10001"):
        ops.objects.delete([key(1)] * 10_001)


def test_an_adapter_failure_is_reported_not_raised(stack: Any) -> None:
    sm, l2, ops = stack()
    put_l1(sm.l1, [key(1)], l2=l2)

    def boom(keys: Sequence[ObjectKey]) -> list[bool]:
        raise OSError("disk gone")

    l2.delete = boom  # type: ignore[method-assign]
    outcome = ops.objects.delete([key(1)], tier=Tier.ALL)
    assert (outcome.ok, outcome.error, outcome.l1_deleted) == (False, "disk gone", 1)


# --------------------------------------------------------------------------- listing, inventory


def test_listing_pages_and_filters(stack: Any) -> None:
    _, l2, ops = stack()
    put_l2(l2, [key(1), key(2), key(3, salt="t")])
    page = ops.objects.list_objects(None, page_size=2)
    # The mock adapter cannot tell stored sizes without reading: null, not a guess.
    assert [size for _, size in page.entries] == [None, None] and page.next_page_token is not None
    rest = ops.objects.list_objects("mock", page_size=2, page_token=page.next_page_token)
    assert len(rest.entries) == 1 and rest.next_page_token is None
    assert [k for k, _ in ops.objects.list_objects(None, page_size=10, cache_salt="t").entries] == [key(3, salt="t")]
    with pytest.raises(InvalidRequestError, match="invalid page_token"):
        ops.objects.list_objects(None, page_size=2, page_token="not-a-token")


def test_listings_carry_the_sizes_an_adapter_knows(tmp_path: Path) -> None:
    clock = ManualClock()
    quotas = QuotaManager()
    fs = FSL2Adapter(str(tmp_path))
    sm = StorageManager(
        L1Manager(BytearrayMemoryPool(4 * OBJ), clock=clock), policy=make_policy("LRU", quotas), quotas=quotas,
        l2_adapters=[("fs", fs)], clock=clock, eviction_interval_seconds=3600,
    )
    try:
        assert fs.submit_store([key(1)], [memoryview(b"x" * 100)]).result(timeout=5) == [True]
        page = ObjectService(sm).list_objects("fs", page_size=10)
        assert page.entries == [(key(1), 100)]
    finally:
        sm.close()


def test_inventory_names_kind_and_reconfigurability(stack: Any) -> None:
    _, _, ops = stack()
    (info,) = ops.objects.adapters()
    assert (info.index, info.kind, info.type_name, info.primary, info.reconfigurable) == (0, "mock", "MockL2Adapter", True, False)


# --------------------------------------------------------------------------- clear


def test_clear_without_force_keeps_locked_objects(stack: Any) -> None:
    sm, l2, ops = stack()
    put_l1(sm.l1, [key(1), key(2)], l2=l2)
    sm.l1.reserve_read([key(1)])
    assert ops.clear.clear() == 1 and sm.l1.contains(key(1))
    assert ops.clear.clear(force=True) == 1 and sm.l1.object_count() == 0


def test_clear_only_clears_l1(stack: Any) -> None:
    sm, _, _ = stack()
    with pytest.raises(InvalidRequestError, match="tier 'l2' not supported; only 'l1'"):
        ClearService(sm).clear(tier=Tier.L2)


# --------------------------------------------------------------------------- checksums


def test_checksums_check_the_instance_first_then_the_arguments() -> None:
    source = FakeSource()
    registry = KVCacheRegistry()
    registry.add_source(source)
    service = ChecksumService(registry)
    with pytest.raises(NotFoundError, match="instance_id 3 not registered"):
        service.compute(3, [], 0)
    with pytest.raises(InvalidRequestError, match="block_ids is required"):
        service.compute(7, [], 2)
    with pytest.raises(InvalidRequestError, match="chunk_size must be positive"):
        service.compute(7, [1], 0)
    with pytest.raises(InvalidRequestError, match=">= 0"):
        service.compute(7, [-1], 1)
    result = service.compute(7, [0, 1, 2], 2, layerwise=True)
    assert (result.num_chunks, result.checksums, result.layerwise) == (2, ["md5-0", "md5-1"], True)
    assert source.calls == [([0, 1, 2], 2, True)]


def test_a_layout_without_checksums_is_not_supported() -> None:
    class NoChecksums:
        def object_size(self, model_name: str, world_size: int) -> int | None:
            return None

        def kv_cache(self, instance_id: int) -> Any:
            class Cache:
                def checksums(self, block_ids: Sequence[int], chunk_blocks: int, *, layerwise: bool) -> Any:
                    raise NotSupportedError("checksum not supported for this layout")

            return Cache()

    registry = KVCacheRegistry()
    registry.add_source(NoChecksums())
    with pytest.raises(NotSupportedError):
        ChecksumService(registry).compute(0, [1], 1)


def test_the_registry_asks_its_sources_in_order_and_forgets_removed_ones() -> None:
    registry = KVCacheRegistry()
    first, second = FakeSource(object_size=10), FakeSource(object_size=20)
    registry.add_source(first)
    registry.add_source(second)
    registry.add_source(first)  # once only
    assert registry.object_size(MODEL, 1) == 10
    registry.remove_source(first)
    assert registry.object_size(MODEL, 1) == 20 and registry.kv_cache(7) is not None
    registry.remove_source(second)
    assert registry.object_size(MODEL, 1) is None and registry.kv_cache(7) is None


# --------------------------------------------------------------------------- warm prefetch


def prompt_keys(tokens: list[int], world_size: int = 1, salt: str = "") -> list[ObjectKey]:
    hashes = TokenHasher("blake3", CHUNK).chunk_hashes(tokens)
    return [ObjectKey(h, MODEL, kv_rank_for(world_size, r), 0, salt) for h in hashes for r in range(world_size)]


def poll(service: WarmPrefetchService, request_id: str) -> Any:
    """The job's status once it is no longer pending (the read that sees it done also forgets it)."""

    def done() -> Any:
        status = service.status(request_id)
        return None if status.state == PENDING else status

    return poll_until(done, interval=0.002, what=f"warm prefetch {request_id} to complete")


def test_warm_prefetch_loads_every_l2_hit_and_keeps_it_in_l1_unlocked(stack: Any) -> None:
    sm, l2, ops = stack(source=FakeSource())
    tokens = list(range(4 * CHUNK + 5))
    keys = prompt_keys(tokens)
    # Chunks 0, 2 and 3 are in L2, chunk 1 is nowhere: a lookup would stop at the gap, a warm
    # prefetch loads past it.
    put_l2(l2, [keys[0], keys[2], keys[3]])
    submitted = ops.prefetch.submit(MODEL, 1, tokens)
    assert (submitted.status, submitted.chunks) == ("submitted", 4)
    status = poll(ops.prefetch, submitted.request_id)
    assert (status.state, status.found_keys, status.total_keys) == (COMPLETED, 3, 4)
    infos = sm.l1.inspect(keys)
    for k, info in zip(keys, infos, strict=True):
        if k == keys[1]:
            assert info is None
            continue
        assert info is not None and info.readable and not info.locked and not info.temporary
        view = sm.l1.view(k)
        assert view is not None and bytes(view) == bytes([k.chunk_hash[-1]]) * OBJ
    # The L2 locks the lookup took are released: the keys can be deleted there.
    assert l2.delete([keys[0], keys[2], keys[3]]) == [True, True, True]
    # And the job is reported once.
    with pytest.raises(NotFoundError, match="already completed or never submitted"):
        ops.prefetch.status(submitted.request_id)


def test_keys_already_in_l1_count_as_found(stack: Any) -> None:
    sm, l2, ops = stack(source=FakeSource())
    tokens = list(range(2 * CHUNK))
    keys = prompt_keys(tokens)
    put_l1(sm.l1, [keys[0]], l2=l2)
    l2.delete([keys[0]])  # only in L1 now
    put_l2(l2, [keys[1]])
    status = poll(ops.prefetch, ops.prefetch.submit(MODEL, 1, tokens).request_id)
    assert (status.found_keys, status.total_keys) == (2, 2)
    assert sm.l1.inspect([keys[0]])[0].read_lock_count == 0


def test_warm_prefetch_fans_out_over_ranks_and_salts(stack: Any) -> None:
    _, l2, ops = stack(source=FakeSource(world_size=2))
    tokens = list(range(CHUNK))
    keys = prompt_keys(tokens, world_size=2, salt="tenant")
    put_l2(l2, keys)
    status = poll(ops.prefetch, ops.prefetch.submit(MODEL, 2, tokens, "tenant").request_id)
    assert (status.found_keys, status.total_keys) == (2, 2)


def test_warm_prefetch_without_l2_counts_what_l1_has(stack: Any) -> None:
    sm, _, ops = stack(with_l2=False, source=FakeSource())
    tokens = list(range(2 * CHUNK))
    put_l1(sm.l1, prompt_keys(tokens)[:1])
    status = poll(ops.prefetch, ops.prefetch.submit(MODEL, 1, tokens).request_id)
    assert (status.state, status.found_keys, status.total_keys) == (COMPLETED, 1, 2)


def test_warm_prefetch_refusals(stack: Any) -> None:
    _, _, ops = stack(source=FakeSource())
    with pytest.raises(InvalidRequestError, match="only 'l2'->'l1'"):
        ops.prefetch.submit(MODEL, 1, [1], source=Tier.L1)
    with pytest.raises(UnavailableError, match="no layout registered for model_name='other' world_size=1"):
        ops.prefetch.submit("other", 1, [1])
    with pytest.raises(InvalidKeyError, match="cache_salt"):
        ops.prefetch.submit(MODEL, 1, [1], "a/b")
    with pytest.raises(InvalidRequestError, match="token_ids"):
        ops.prefetch.submit(MODEL, 1, [-5] + [1] * CHUNK)
    with pytest.raises(InvalidRequestError, match="too many token_ids"):
        ops.prefetch.submit(MODEL, 1, range(1_000_001))  # type: ignore[arg-type]
    noop = ops.prefetch.submit(MODEL, 1, list(range(CHUNK - 1)))
    assert (noop.request_id, noop.chunks, noop.status) == (None, 0, "noop")


def test_jobs_nobody_polls_are_forgotten(stack: Any) -> None:
    _, _, ops = stack(source=FakeSource())
    service = ops.prefetch
    first = service.submit(MODEL, 1, list(range(CHUNK))).request_id
    service._clock.advance(3601)  # type: ignore[attr-defined]
    second = service.submit(MODEL, 1, list(range(CHUNK))).request_id
    assert service.pending_count() == 1
    with pytest.raises(NotFoundError):
        service.status(first)
    assert poll(service, second).state == COMPLETED
