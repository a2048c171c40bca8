"""EvictionController: watermark eviction, quotas, lock safety, failure and death handling."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lmcache_core.clock import ManualClock
from lmcache_core.errors import ConfigError
from lmcache_core.eviction import EvictionController, IsolatedLRUPolicy, LRUPolicy
from lmcache_core.keys import ObjectKey
from lmcache_core.l1 import L1Manager, OpResult
from lmcache_core.quota import QuotaManager
from lmcache_core.testing import BytearrayMemoryPool, poll_until

SLOT = 4096


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(chunk_hash=i.to_bytes(8, "big"), model_name="m", kv_rank=0, cache_salt=salt)



def store(l1: L1Manager, keys: list[ObjectKey]) -> None:
    assert [r for r, _ in l1.reserve_write(keys, [SLOT] * len(keys))] == [OpResult.SUCCESS] * len(
        keys
    )
    assert l1.finish_write(keys) == [OpResult.SUCCESS] * len(keys)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def l1(clock: ManualClock) -> L1Manager:
    return L1Manager(
        BytearrayMemoryPool(10 * SLOT), clock=clock, write_ttl_seconds=60, read_ttl_seconds=30
    )


class FlakyPolicy(LRUPolicy):
    """An LRU whose victim listing can be made to raise."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    def mandatory_victims(self) -> Iterator[ObjectKey]:
        if self.error is not None:
            raise self.error
        return super().mandatory_victims()

    def victims(self) -> Iterator[ObjectKey]:
        if self.error is not None:
            raise self.error
        return super().victims()


class Die(BaseException):
    """Escapes `except Exception`: kills the thread, as a real bug somewhere deep might."""


def test_evicts_lru_down_by_the_ratio_when_over_the_watermark(
    l1: L1Manager, clock: ManualClock
) -> None:
    controller = EvictionController(l1, LRUPolicy(), clock=clock)
    store(l1, [key(i) for i in range(9)])  # 90 % full
    l1.touch([key(0)])
    l1.reserve_read([key(1)])
    assert controller.run_cycle()
    # 20 % of 10 slots = 2 slots: the two oldest unlocked objects go.
    assert sorted(k.chunk_hash[-1] for k in l1.keys()) == [0, 1, 4, 5, 6, 7, 8]
    status = controller.report_status()
    assert status["is_healthy"] is True
    assert status["evicted_objects_total"] == 2 and status["evicted_bytes_total"] == 2 * SLOT
    assert status["cycles"] == 1 and status["failures"] == 0
    assert status["last_cycle"]["under_pressure"] is True
    assert status["last_cycle"]["usage_ratio_after"] == pytest.approx(0.7)


def test_does_nothing_below_the_watermark(l1: L1Manager, clock: ManualClock) -> None:
    controller = EvictionController(l1, LRUPolicy(), clock=clock)
    store(l1, [key(i) for i in range(7)])
    assert controller.run_cycle()
    assert l1.object_count() == 7
    assert controller.report_status()["evicted_objects_total"] == 0


def test_never_evicts_locked_objects(l1: L1Manager, clock: ManualClock) -> None:
    controller = EvictionController(
        l1, LRUPolicy(), clock=clock, trigger_watermark=0.5, eviction_ratio=1.0
    )
    store(l1, [key(i) for i in range(10)])
    l1.reserve_read([key(i) for i in range(0, 10, 2)])
    controller.run_cycle()
    assert sorted(k.chunk_hash[-1] for k in l1.keys()) == [0, 2, 4, 6, 8]


def test_cycle_expires_locks_of_crashed_clients(l1: L1Manager, clock: ManualClock) -> None:
    controller = EvictionController(l1, LRUPolicy(), clock=clock)
    l1.reserve_write([key(1)], [SLOT])  # the writer crashes
    clock.advance(61)
    controller.run_cycle()
    assert not l1.contains(key(1))
    assert l1.pool.used_bytes == 0
    assert controller.report_status()["last_cycle"]["expired_locks"] == 1


def test_isolated_lru_trims_salts_to_their_quotas(l1: L1Manager, clock: ManualClock) -> None:
    quotas = QuotaManager()
    quotas.set("tenant", 3 * SLOT)
    controller = EvictionController(l1, IsolatedLRUPolicy(quotas), clock=clock)
    store(l1, [key(i, "tenant") for i in range(3)])
    store(l1, [key(10 + i, "stranger") for i in range(2)])
    for _ in range(3):
        controller.run_cycle()
    assert l1.keys(cache_salt="stranger") == []
    assert len(l1.keys(cache_salt="tenant")) == 3
    # Over its quota, the tenant loses its oldest objects only.
    store(l1, [key(5, "tenant")])
    l1.touch([key(0, "tenant")])
    controller.run_cycle()
    assert sorted(k.chunk_hash[-1] for k in l1.keys()) == [0, 2, 5]
    assert l1.bytes_by_salt() == {"tenant": 3 * SLOT}


def test_isolated_lru_waits_for_locked_objects(l1: L1Manager, clock: ManualClock) -> None:
    controller = EvictionController(l1, IsolatedLRUPolicy(QuotaManager()), clock=clock)
    store(l1, [key(1, "s")])
    l1.reserve_read([key(1, "s")])
    controller.run_cycle()
    assert l1.contains(key(1, "s"))
    l1.finish_read([key(1, "s")])
    controller.run_cycle()
    assert not l1.contains(key(1, "s"))


def test_forgets_keys_the_tier_no_longer_holds(l1: L1Manager, clock: ManualClock) -> None:
    policy = IsolatedLRUPolicy(QuotaManager())
    controller = EvictionController(l1, policy, clock=clock)
    policy.on_added(key(42, "ghost"), SLOT)  # a key L1 never held (e.g. a missed event)
    controller.run_cycle()
    assert policy.bytes_by_salt() == {}
    assert controller.report_status()["stale_keys_forgotten_total"] == 1


def test_a_raising_policy_fails_the_cycle_and_recovers(l1: L1Manager, clock: ManualClock) -> None:
    policy = FlakyPolicy()
    controller = EvictionController(l1, policy, clock=clock)
    store(l1, [key(i) for i in range(9)])
    policy.error = RuntimeError("policy exploded")
    assert controller.run_cycle() is False
    status = controller.report_status()
    assert status["is_healthy"] is False
    assert status["failures"] == 1 and status["cycles"] == 1
    assert "policy exploded" in status["last_error"]
    policy.error = None
    assert controller.run_cycle() is True
    status = controller.report_status()
    assert status["is_healthy"] is True and status["failures"] == 1 and status["cycles"] == 2
    assert l1.object_count() == 7


def test_a_raising_policy_does_not_break_writes(l1: L1Manager, clock: ManualClock) -> None:
    policy = FlakyPolicy()
    controller = EvictionController(l1, policy, clock=clock)
    store(l1, [key(i) for i in range(10)])
    policy.error = RuntimeError("policy exploded")
    assert l1.reserve_write([key(99)], [SLOT]) == [(OpResult.OUT_OF_MEMORY, None)]
    status = controller.report_status()
    assert (
        status["reclaim_failures_total"] == 1 and "policy exploded" in status["last_reclaim_error"]
    )
    policy.error = None
    assert l1.reserve_write([key(99)], [SLOT])[0][0] is OpResult.SUCCESS


def test_thread_runs_periodically_and_survives_failures(l1: L1Manager) -> None:
    policy = FlakyPolicy()
    controller = EvictionController(l1, policy, interval_seconds=0.01)
    store(l1, [key(i) for i in range(9)])
    policy.error = RuntimeError("transient")
    controller.start()
    try:
        assert poll_until(lambda: controller.report_status()["failures"] >= 2)
        status = controller.report_status()
        assert status["thread_alive"] is True and status["is_healthy"] is False
        policy.error = None
        assert poll_until(lambda: controller.report_status()["is_healthy"])
        assert poll_until(lambda: l1.object_count() == 7)
    finally:
        assert controller.stop()


def test_a_dead_thread_is_reported_and_restarted(l1: L1Manager) -> None:
    policy = FlakyPolicy()
    controller = EvictionController(l1, policy, interval_seconds=0.01)
    policy.error = Die("thread killer")
    controller.start()
    try:
        assert poll_until(lambda: not controller.thread.is_alive())
        status = controller.report_status()
        assert status["thread_alive"] is False and status["is_healthy"] is False
        assert controller.thread.to_dict()["unhealthy_reason"] == "dead"
        policy.error = None
        assert controller.ensure_running() is True
        assert controller.ensure_running() is False  # already alive
        assert poll_until(lambda: controller.report_status()["is_healthy"])
        assert controller.thread.to_dict()["restarts"] == 1
    finally:
        assert controller.stop()


def test_stop_is_immediate_even_with_a_long_period(l1: L1Manager) -> None:
    controller = EvictionController(l1, LRUPolicy(), interval_seconds=30.0)
    controller.start()
    assert controller.thread.is_alive()
    # Stopped well inside the 30 s interval without a cycle: the stop event woke the thread's
    # wait (an event check, where a wall-clock bound equal to the timeout flaked).
    assert controller.stop(timeout=5.0)
    status = controller.report_status()
    assert status["cycles"] == 0
    assert status["thread_alive"] is False and status["thread_running"] is False
    assert controller.ensure_running() is False  # stopped on purpose: not restarted


def test_reclaim_from_another_thread_while_the_controller_runs(clock: ManualClock) -> None:
    # Writers reclaim on their own threads while the controller thread evicts: no deadlock.
    l1 = L1Manager(BytearrayMemoryPool(32 * SLOT), clock=clock)
    controller = EvictionController(l1, LRUPolicy(), interval_seconds=0.001)
    controller.start()
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        try:
            for i in range(150):
                keys = [key(base + 2 * i), key(base + 2 * i + 1)]
                results = l1.reserve_write(keys, [SLOT, SLOT])
                ok = [k for k, (r, _) in zip(keys, results, strict=True) if r is OpResult.SUCCESS]
                assert len(ok) == 2, results
                l1.finish_write(ok)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n * 10_000,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not any(t.is_alive() for t in threads), "deadlock"
        assert not errors, errors[0]
    finally:
        assert controller.stop()
    assert l1.pool.used_bytes <= 32 * SLOT
    assert controller.report_status()["failures"] == 0


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"trigger_watermark": 0.0}, "trigger"),
        ({"trigger_watermark": 1.5}, "trigger"),
        ({"eviction_ratio": float("nan")}, "eviction_ratio"),
        ({"eviction_ratio": -0.1}, "eviction_ratio"),
        ({"interval_seconds": 0}, "interval"),
    ],
)
def test_rejects_bad_settings(l1: L1Manager, kwargs: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        EvictionController(l1, LRUPolicy(), **kwargs)


def test_wire_false_leaves_the_manager_alone(l1: L1Manager, clock: ManualClock) -> None:
    policy = LRUPolicy()
    controller = EvictionController(l1, policy, clock=clock, wire=False)
    store(l1, [key(1)])
    assert len(policy) == 0
    assert l1.report_status()["reclaimer_installed"] is False
    assert controller.reclaim(SLOT) == 0
