"""Eviction policies: LRU order, IsolatedLRU quotas, noop, the factory and the L1 listener."""

from __future__ import annotations

import pytest

from lmcache_core.errors import ConfigError
from lmcache_core.eviction import (
    EvictionPolicy,
    IsolatedLRUPolicy,
    LRUPolicy,
    NoopPolicy,
    PolicyListener,
    make_policy,
)
from lmcache_core.keys import ObjectKey
from lmcache_core.quota import QuotaManager


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(chunk_hash=i.to_bytes(8, "big"), model_name="m", kv_rank=0, cache_salt=salt)


# --------------------------------------------------------------------------- LRU


def test_lru_evicts_oldest_first_and_access_refreshes() -> None:
    lru = LRUPolicy()
    for i in range(5):
        lru.on_added(key(i), 10)
    lru.on_accessed(key(0))
    lru.on_accessed(key(99))  # unknown: ignored
    lru.on_added(key(2), 30)  # rewritten: now the youngest
    assert list(lru.victims()) == [key(1), key(3), key(4), key(0), key(2)]
    assert list(lru.mandatory_victims()) == []
    lru.on_removed(key(3))
    lru.on_removed(key(3))  # unknown: ignored
    assert list(lru.victims()) == [key(1), key(4), key(0), key(2)]
    assert lru.report_status() == {
        "is_healthy": True,
        "policy": "LRU",
        "tracked_keys": 4,
        "tracked_bytes": 60,
    }


def test_lru_victims_iterate_a_snapshot() -> None:
    lru = LRUPolicy()
    for i in range(4):
        lru.on_added(key(i), 1)
    it = lru.victims()
    first = next(it)
    lru.on_removed(key(1))
    lru.on_added(key(9), 1)
    assert [first, *it] == [key(0), key(1), key(2), key(3)]


# --------------------------------------------------------------------------- IsolatedLRU


@pytest.fixture
def quotas() -> QuotaManager:
    return QuotaManager()


def test_isolated_salt_without_quota_is_entirely_mandatory(quotas: QuotaManager) -> None:
    policy = IsolatedLRUPolicy(quotas)
    policy.on_added(key(1, "free"), 10)
    policy.on_added(key(2, "free"), 10)
    assert list(policy.mandatory_victims()) == [key(1, "free"), key(2, "free")]


def test_isolated_trims_only_the_excess_oldest_first(quotas: QuotaManager) -> None:
    quotas.set("a", 25)
    quotas.set("b", 100)
    policy = IsolatedLRUPolicy(quotas)
    for i in range(5):
        policy.on_added(key(i, "a"), 10)  # 50 bytes, 25 over
        policy.on_added(key(100 + i, "b"), 10)  # 50 bytes, within quota
    policy.on_accessed(key(0, "a"))
    assert list(policy.mandatory_victims()) == [key(1, "a"), key(2, "a"), key(3, "a")]
    report = policy.report_status()
    assert report["over_quota_salts"] == ["a"]
    assert report["salts"]["a"] == {
        "tracked_keys": 5,
        "tracked_bytes": 50,
        "limit_bytes": 25,
        "has_quota": True,
        "over_quota": True,
    }
    assert report["salts"]["b"]["over_quota"] is False
    assert policy.bytes_by_salt() == {"a": 50, "b": 50}


def test_isolated_most_over_salt_goes_first(quotas: QuotaManager) -> None:
    quotas.set("small", 15)
    policy = IsolatedLRUPolicy(quotas)
    policy.on_added(key(1, "small"), 10)
    policy.on_added(key(2, "small"), 10)  # 5 over
    policy.on_added(key(3, "none"), 40)  # 40 over
    assert list(policy.mandatory_victims()) == [key(3, "none"), key(1, "small")]


def test_isolated_quota_changes_apply_to_the_next_call(quotas: QuotaManager) -> None:
    policy = IsolatedLRUPolicy(quotas)
    policy.on_added(key(1, "t"), 10)
    assert list(policy.mandatory_victims()) == [key(1, "t")]
    quotas.set("t", 10)
    assert list(policy.mandatory_victims()) == []
    quotas.delete("t")
    assert list(policy.mandatory_victims()) == [key(1, "t")]


def test_isolated_victims_over_quota_first_then_global_age(quotas: QuotaManager) -> None:
    quotas.set("a", 1000)
    quotas.set("b", 1000)
    quotas.set("c", 10)
    policy = IsolatedLRUPolicy(quotas)
    policy.on_added(key(1, "a"), 10)
    policy.on_added(key(2, "b"), 10)
    policy.on_added(key(3, "c"), 10)
    policy.on_added(key(4, "c"), 10)  # c is 10 over: key(3) is its mandatory victim
    policy.on_added(key(5, "a"), 10)
    policy.on_accessed(key(1, "a"))
    assert list(policy.victims()) == [
        key(3, "c"),
        key(2, "b"),
        key(4, "c"),
        key(5, "a"),
        key(1, "a"),
    ]


def test_isolated_resize_and_remove_keep_bytes_exact(quotas: QuotaManager) -> None:
    policy = IsolatedLRUPolicy(quotas)
    policy.on_added(key(1, "x"), 10)
    policy.on_added(key(1, "x"), 30)
    policy.on_added(key(2, "x"), 5)
    assert policy.bytes_by_salt() == {"x": 35} and len(policy) == 2
    policy.on_removed(key(1, "x"))
    policy.on_removed(key(1, "x"))
    policy.on_removed(key(7, "nobody"))
    policy.on_accessed(key(7, "nobody"))
    assert policy.bytes_by_salt() == {"x": 5} and len(policy) == 1
    policy.on_removed(key(2, "x"))
    assert policy.bytes_by_salt() == {} and policy.report_status()["tracked_keys"] == 0


def test_isolated_empty_salt_is_a_salt_like_any_other(quotas: QuotaManager) -> None:
    quotas.set("", 10)
    policy = IsolatedLRUPolicy(quotas)
    policy.on_added(key(1), 10)
    assert list(policy.mandatory_victims()) == []
    policy.on_added(key(2), 10)
    assert list(policy.mandatory_victims()) == [key(1)]


# --------------------------------------------------------------------------- noop, factory


def test_noop_never_proposes_anything() -> None:
    policy = NoopPolicy()
    policy.on_added(key(1), 10)
    policy.on_accessed(key(1))
    assert list(policy.victims()) == [] and list(policy.mandatory_victims()) == []
    policy.on_removed(key(1))
    assert policy.report_status()["is_healthy"] is True


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("LRU", LRUPolicy),
        ("lru", LRUPolicy),
        ("IsolatedLRU", IsolatedLRUPolicy),
        ("isolatedlru", IsolatedLRUPolicy),
        ("noop", NoopPolicy),
        ("NOOP", NoopPolicy),
    ],
)
def test_make_policy_names_are_case_insensitive(name: str, cls: type, quotas: QuotaManager) -> None:
    policy = make_policy(name, quotas)
    assert isinstance(policy, cls)
    assert isinstance(policy, EvictionPolicy)


def test_make_policy_rejects_unknown_names_listing_the_accepted_ones() -> None:
    with pytest.raises(ConfigError, match="LRU, IsolatedLRU, noop"):
        make_policy("FIFO", None)


def test_isolated_lru_needs_quotas() -> None:
    with pytest.raises(ConfigError, match="QuotaManager"):
        make_policy("IsolatedLRU", None)


def test_policy_listener_maps_l1_events() -> None:
    lru = LRUPolicy()
    listener = PolicyListener(lru)
    listener.on_l1_keys_write_finished([key(1), key(2), key(3)], [1, 2, 3])
    listener.on_l1_keys_read_reserved([key(1)])
    listener.on_l1_keys_touched([key(2)])
    assert list(lru.victims()) == [key(3), key(1), key(2)]
    listener.on_l1_keys_reserved_write([key(9)], [1])  # not resident yet: no effect
    listener.on_l1_keys_removed([key(3)], [3], "evict")
    assert list(lru.victims()) == [key(1), key(2)]
    assert lru.report_status()["tracked_bytes"] == 3
