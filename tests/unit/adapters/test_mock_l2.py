"""Tests of the in-memory `mock` L2 adapter: semantics, capacity, pagination, simulated bandwidth, close."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from lmcache_adapters.l2.mock import MOCK_FIELDS, MockL2Adapter, create_mock_adapter
from lmcache_core.errors import ConfigError, NotInitializedError
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.plugin.registry import L2AdapterRegistry
from lmcache_core.ports import L2Adapter
from lmcache_core.testing import poll_until

WAIT = 5.0  # bound on any Future in this module


def make_key(i: int, *, model: str = "org/model-a", salt: str = "") -> ObjectKey:
    return ObjectKey(i.to_bytes(4, "big") * 8, model, kv_rank_for(1, 0), 0, salt)


def payload(n: int, seed: int = 0) -> memoryview:
    buf = bytearray((seed * 31 + i * 7) % 256 for i in range(n))
    return memoryview(buf)


def result(future: Future[list[bool]]) -> list[bool]:
    return future.result(timeout=WAIT)


@pytest.fixture
def adapter() -> Iterator[MockL2Adapter]:
    a = MockL2Adapter()
    yield a
    a.close()



# ----------------------------------------------------------------------------- protocol


def test_implements_the_port(adapter: MockL2Adapter) -> None:
    assert isinstance(adapter, L2Adapter)
    assert adapter.kind == "mock"


def test_store_lookup_load_round_trip(adapter: MockL2Adapter) -> None:
    keys = [make_key(i) for i in range(3)]
    payloads = [payload(100 + i, seed=i) for i in range(3)]
    assert result(adapter.submit_store(keys, payloads)) == [True] * 3
    assert result(adapter.submit_lookup_and_lock(keys + [make_key(9)])) == [True, True, True, False]
    buffers = [bytearray(p.nbytes) for p in payloads]
    assert result(adapter.submit_load(keys, [memoryview(b) for b in buffers])) == [True] * 3
    assert [bytes(b) for b in buffers] == [bytes(p) for p in payloads]


def test_store_copies_the_payload(adapter: MockL2Adapter) -> None:
    source = bytearray(b"x" * 64)
    key = make_key(1)
    assert result(adapter.submit_store([key], [memoryview(source)])) == [True]
    source[:] = b"y" * 64  # the caller reuses its buffer once the Future is done
    out = bytearray(64)
    assert result(adapter.submit_load([key], [memoryview(out)])) == [True]
    assert out == b"x" * 64


def test_load_rejects_wrong_size_and_readonly_buffers(adapter: MockL2Adapter) -> None:
    key = make_key(1)
    result(adapter.submit_store([key], [payload(32)]))
    small, large, exact = bytearray(31), bytearray(33), bytearray(32)
    readonly = memoryview(bytes(32))
    ok = result(adapter.submit_load([key] * 4, [memoryview(small), memoryview(large), readonly, memoryview(exact)]))
    assert ok == [False, False, False, True]
    assert small == bytearray(31) and large == bytearray(33), "a failed load must not write the buffer"
    assert bytes(exact) == bytes(payload(32))


def test_load_into_a_typed_view(adapter: MockL2Adapter) -> None:
    key = make_key(1)
    result(adapter.submit_store([key], [payload(64)]))
    out = bytearray(64)
    assert result(adapter.submit_load([key], [memoryview(out).cast("H")])) == [True]
    assert bytes(out) == bytes(payload(64))


def test_overwrite_replaces_bytes_and_accounting(adapter: MockL2Adapter) -> None:
    key = make_key(1, salt="t")
    result(adapter.submit_store([key], [payload(100)]))
    result(adapter.submit_store([key], [payload(40, seed=5)]))
    usage = adapter.usage()
    assert usage.used_bytes == 40 and dict(usage.bytes_by_salt) == {"t": 40}
    out = bytearray(40)
    assert result(adapter.submit_load([key], [memoryview(out)])) == [True]
    assert bytes(out) == bytes(payload(40, seed=5))
    assert adapter.report_status()["stored_object_count"] == 1


def test_mismatched_batch_lengths_raise_at_submit(adapter: MockL2Adapter) -> None:
    with pytest.raises(ValueError, match="2 keys but 1 payloads"):
        adapter.submit_store([make_key(1), make_key(2)], [payload(8)])
    with pytest.raises(ValueError, match="buffers"):
        adapter.submit_load([make_key(1)], [])


# ----------------------------------------------------------------------------- locks and delete


def test_locked_keys_survive_delete_until_every_lock_is_released(adapter: MockL2Adapter) -> None:
    a, b = make_key(1), make_key(2)
    result(adapter.submit_store([a, b], [payload(8), payload(8)]))
    assert result(adapter.submit_lookup_and_lock([a])) == [True]
    assert result(adapter.submit_lookup_and_lock([a])) == [True]
    assert adapter.report_status()["locked_key_count"] == 1
    assert adapter.delete([a, b, make_key(3)]) == [False, True, False]
    adapter.unlock([a])
    assert adapter.delete([a]) == [False]
    adapter.unlock([a, make_key(404)])  # unknown keys are ignored
    assert adapter.report_status()["locked_key_count"] == 0
    assert adapter.delete([a]) == [True]
    assert result(adapter.submit_lookup_and_lock([a, b])) == [False, False]
    assert adapter.usage().used_bytes == 0


def test_lock_survives_overwrite(adapter: MockL2Adapter) -> None:
    key = make_key(1)
    result(adapter.submit_store([key], [payload(8)]))
    result(adapter.submit_lookup_and_lock([key]))
    result(adapter.submit_store([key], [payload(16)]))
    assert adapter.delete([key]) == [False]


def test_missed_lookup_takes_no_lock(adapter: MockL2Adapter) -> None:
    key = make_key(1)
    assert result(adapter.submit_lookup_and_lock([key])) == [False]
    result(adapter.submit_store([key], [payload(8)]))
    assert adapter.delete([key]) == [True]


# ----------------------------------------------------------------------------- capacity


def test_store_beyond_capacity_fails_only_for_that_key() -> None:
    a = MockL2Adapter(capacity_bytes=100)
    try:
        keys = [make_key(i) for i in range(4)]
        assert result(a.submit_store(keys, [payload(40) for _ in keys])) == [True, True, False, False]
        assert result(a.submit_store([make_key(9)], [payload(20)])) == [True]  # exactly full
        usage = a.usage()
        assert usage.used_bytes == 100 and usage.capacity_bytes == 100
        assert result(a.submit_lookup_and_lock(keys)) == [True, True, False, False]
        a.unlock(keys[:2])
        # overwriting with a smaller payload fits even when full; a larger one does not
        assert result(a.submit_store([keys[0]], [payload(30)])) == [True]
        assert result(a.submit_store([keys[1]], [payload(51)])) == [False]
        assert a.delete([keys[0]]) == [True]
        assert result(a.submit_store([keys[2]], [payload(40)])) == [True]
        assert a.usage().used_bytes == 100
    finally:
        a.close()


def test_zero_capacity_refuses_everything_but_empty_payloads() -> None:
    a = MockL2Adapter(capacity_bytes=0)
    try:
        assert result(a.submit_store([make_key(1), make_key(2)], [payload(1), payload(0)])) == [False, True]
    finally:
        a.close()


# ----------------------------------------------------------------------------- listing


def collect(adapter: MockL2Adapter, page_size: int, **filters: str) -> list[ObjectKey]:
    seen: list[ObjectKey] = []
    token: str | None = None
    for _ in range(1000):
        page = adapter.list_keys(page_size, token, **filters)
        assert len(page.keys) <= page_size
        seen.extend(page.keys)
        token = page.next_page_token
        if token is None:
            return seen
        assert page.keys, "a page with a next token must not be empty"
    raise AssertionError("listing did not terminate")


def test_pagination_covers_every_key_once_with_filters(adapter: MockL2Adapter) -> None:
    keys = (
        [make_key(i) for i in range(7)]
        + [make_key(i, model="org/model-b") for i in range(7, 12)]
        + [make_key(i, salt="tenant-x") for i in range(12, 20)]
        + [make_key(i, model="org/model-b", salt="tenant-x") for i in range(20, 23)]
    )
    result(adapter.submit_store(keys, [payload(4, seed=i) for i in range(len(keys))]))
    for page_size in (1, 2, 3, 5, 100):
        everything = collect(adapter, page_size)
        assert len(everything) == len(set(everything)) == len(keys)
        assert set(everything) == set(keys)
        names = [k.to_storage_name() for k in everything]
        assert names == sorted(names), "listing order is by storage name"
        by_model = collect(adapter, page_size, model_name="org/model-b")
        assert sorted(by_model, key=str) == sorted(keys[7:12] + keys[20:], key=str)
        assert len(by_model) == len(set(by_model))
        by_salt = collect(adapter, page_size, cache_salt="tenant-x")
        assert set(by_salt) == set(keys[12:]) and len(by_salt) == 11
        default_salt = collect(adapter, page_size, cache_salt="")
        assert set(default_salt) == set(keys[:12])
        both = collect(adapter, page_size, model_name="org/model-a", cache_salt="tenant-x")
        assert set(both) == set(keys[12:20]) and len(both) == 8
        assert collect(adapter, page_size, model_name="nobody") == []


def test_pagination_is_stable_under_concurrent_changes(adapter: MockL2Adapter) -> None:
    keys = [make_key(i) for i in range(10)]
    result(adapter.submit_store(keys, [payload(4)] * 10))
    ordered = sorted(keys, key=ObjectKey.to_storage_name)
    first = adapter.list_keys(4)
    assert first.keys == ordered[:4]
    # deleting a listed key and one not yet listed neither repeats nor skips the others
    assert adapter.delete([ordered[1], ordered[6]]) == [True, True]
    rest = collect_from(adapter, 4, first.next_page_token)
    assert rest == [k for k in ordered[4:] if k != ordered[6]]


def collect_from(adapter: MockL2Adapter, page_size: int, token: str | None) -> list[ObjectKey]:
    out: list[ObjectKey] = []
    for _ in range(100):
        page = adapter.list_keys(page_size, token)
        out.extend(page.keys)
        token = page.next_page_token
        if token is None:
            return out
    raise AssertionError("listing did not terminate")


def test_last_full_page_has_no_next_token(adapter: MockL2Adapter) -> None:
    keys = [make_key(i) for i in range(4)]
    result(adapter.submit_store(keys, [payload(4)] * 4))
    first = adapter.list_keys(2)
    assert first.next_page_token is not None
    second = adapter.list_keys(2, first.next_page_token)
    assert len(second.keys) == 2 and second.next_page_token is None
    empty = MockL2Adapter()
    try:
        assert empty.list_keys(5).keys == [] and empty.list_keys(5).next_page_token is None
    finally:
        empty.close()


@pytest.mark.parametrize("page_size", [0, -1, True, 2.0])
def test_bad_page_size_rejected(adapter: MockL2Adapter, page_size: Any) -> None:
    with pytest.raises(ValueError, match="page_size"):
        adapter.list_keys(page_size)


@pytest.mark.parametrize("token", ["garbage", "", "a/b@01000100@0@ab", 17])
def test_malformed_page_token_rejected(adapter: MockL2Adapter, token: Any) -> None:
    with pytest.raises(ValueError, match="page_token"):
        adapter.list_keys(10, token)


# ----------------------------------------------------------------------------- usage and status


def test_usage_by_salt(adapter: MockL2Adapter) -> None:
    assert adapter.usage().used_bytes == 0 and adapter.usage().capacity_bytes is None
    result(adapter.submit_store([make_key(1), make_key(2, salt="a"), make_key(3, salt="a")], [payload(10), payload(20), payload(30)]))
    usage = adapter.usage()
    assert usage.used_bytes == 60
    assert dict(usage.bytes_by_salt) == {"": 10, "a": 50}
    adapter.delete([make_key(2, salt="a"), make_key(3, salt="a")])
    assert dict(adapter.usage().bytes_by_salt) == {"": 10}


def test_report_status_fields(adapter: MockL2Adapter) -> None:
    result(adapter.submit_store([make_key(1), make_key(2)], [payload(10), payload(5)]))
    result(adapter.submit_lookup_and_lock([make_key(1)]))
    report = adapter.report_status()
    json.dumps(report)
    assert report["is_healthy"] is True
    assert report["kind"] == "mock" and report["type"] == "MockL2Adapter"
    assert report["stored_object_count"] == 2
    assert report["locked_key_count"] == 1
    assert report["used_bytes"] == 15
    assert report["capacity_bytes"] is None
    assert report["pending_operations"] == 0


# ----------------------------------------------------------------------------- simulated bandwidth


class GatedSleep:
    """A sleep hook that records who slept how long and blocks until the test opens the gate."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, seconds: float) -> None:
        self.calls.append((seconds, threading.current_thread().name))
        self.entered.set()
        assert self.gate.wait(WAIT), "test never opened the gate"


def test_bandwidth_delay_runs_on_a_worker_thread() -> None:
    sleep = GatedSleep()
    a = MockL2Adapter(bandwidth_gbps=2.0, sleep=sleep)
    try:
        key = make_key(1)
        future = a.submit_store([key], [payload(4000)])
        # submit returned while the transfer is still "in flight" on the adapter's thread
        assert sleep.entered.wait(WAIT)
        assert not future.done()
        assert a.report_status()["pending_operations"] == 1
        assert result(a.submit_lookup_and_lock([key])) == [False], "not visible before the transfer ends"
        sleep.gate.set()
        assert result(future) == [True]
        seconds, thread_name = sleep.calls[0]
        assert seconds == pytest.approx(4000 / 2e9)
        assert thread_name != threading.current_thread().name
        assert thread_name.startswith("lmcache-l2-")
        out = bytearray(4000)
        assert result(a.submit_load([key], [memoryview(out)])) == [True]
        assert sleep.calls[-1][0] == pytest.approx(4000 / 2e9)
        poll_until(lambda: a.report_status()["pending_operations"] == 0, timeout=WAIT)
    finally:
        sleep.gate.set()
        a.close()


def test_real_bandwidth_delay_is_proportional_and_off_the_caller() -> None:
    a = MockL2Adapter(bandwidth_gbps=0.01)  # 10 MB/s: 1 MB takes 0.1 s
    try:
        t0 = time.monotonic()
        future = a.submit_store([make_key(1)], [memoryview(bytearray(1_000_000))])
        # Off the caller: the submit returned while the 0.1 s transfer was still running (a state
        # check rather than a bound of half the transfer time on the submit; which thread sleeps is
        # checked exactly by test_bandwidth_delay_runs_on_a_worker_thread).
        assert not future.done()
        assert result(future) == [True]
        assert time.monotonic() - t0 >= 0.095
    finally:
        a.close()


def test_close_interrupts_a_simulated_transfer() -> None:
    a = MockL2Adapter(bandwidth_gbps=1e-6)  # 1 KB/s: this store would take 1000 s
    future = a.submit_store([make_key(1)], [memoryview(bytearray(1_000_000))])
    poll_until(lambda: a.report_status()["pending_operations"] == 1, timeout=WAIT)
    # close() returns while the 1000 s transfer is still "running": it interrupts the transfer
    # instead of waiting for it (checked by close finishing on its own thread; WAIT bounds a
    # failing run and is not a measurement).
    closer = threading.Thread(target=a.close)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive(), "close() waited for the simulated transfer"
    try:
        outcome = future.result(timeout=WAIT)
    except Exception:
        return  # cancelled before it started: also a failure
    assert outcome == [False]


# ----------------------------------------------------------------------------- close


def test_close_is_idempotent_and_later_operations_fail_clearly() -> None:
    a = MockL2Adapter()
    key = make_key(1)
    result(a.submit_store([key], [payload(8)]))
    a.close()
    a.close()
    assert a.report_status()["is_healthy"] is False
    for future in (
        a.submit_store([key], [payload(8)]),
        a.submit_lookup_and_lock([key]),
        a.submit_load([key], [memoryview(bytearray(8))]),
    ):
        with pytest.raises(NotInitializedError, match="closed"):
            future.result(timeout=WAIT)


def test_operations_from_many_threads() -> None:
    a = MockL2Adapter(max_workers=3)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for b in range(20):
                keys = [make_key(t * 1000 + b * 10 + j) for j in range(5)]
                data = [payload(64, seed=t + b + j) for j in range(5)]
                assert result(a.submit_store(keys, data)) == [True] * 5
                assert result(a.submit_lookup_and_lock(keys)) == [True] * 5
                bufs = [bytearray(64) for _ in keys]
                assert result(a.submit_load(keys, [memoryview(x) for x in bufs])) == [True] * 5
                assert [bytes(x) for x in bufs] == [bytes(d) for d in data]
                a.unlock(keys)
                assert a.delete(keys[:2]) == [True, True]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=WAIT * 4)
            assert not th.is_alive()
        assert not errors, errors[0]
        report = a.report_status()
        assert report["stored_object_count"] == 4 * 20 * 3
        assert report["used_bytes"] == 4 * 20 * 3 * 64 == a.usage().used_bytes
        assert report["locked_key_count"] == 0
        assert len(collect(a, 97)) == 4 * 20 * 3
    finally:
        a.close()


# ----------------------------------------------------------------------------- configuration


def test_factory_builds_from_config() -> None:
    a = create_mock_adapter({"capacity_bytes": 1000, "bandwidth_gbps": 5, "max_workers": 1, "name": "m2"}, services=None)
    try:
        report = a.report_status()
        assert report["capacity_bytes"] == 1000 and report["bandwidth_gbps"] == 5 and report["name"] == "m2"
        assert a.usage().capacity_bytes == 1000
    finally:
        a.close()
    plain = create_mock_adapter({}, services=None)
    plain.close()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"capacity_bytes": -1}, "capacity_bytes"),
        ({"capacity_bytes": 1.5}, "capacity_bytes"),
        ({"capacity_bytes": True}, "capacity_bytes"),
        ({"bandwidth_gbps": 0}, "bandwidth_gbps"),
        ({"bandwidth_gbps": -2.0}, "bandwidth_gbps"),
        ({"bandwidth_gbps": "fast"}, "bandwidth_gbps"),
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": 1000}, "max_workers"),
        ({"max_workers": 2.0}, "max_workers"),
        ({"capacity": 10}, "capacity"),
    ],
)
def test_factory_rejects_bad_config_naming_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        create_mock_adapter(config, services=None)


def test_registers_through_the_registry() -> None:
    registry = L2AdapterRegistry()
    registry.register("mock", create_mock_adapter, fields=MOCK_FIELDS)
    spec, config = registry.parse('{"type": "mock", "capacity_bytes": 4096, "bandwidth_gbps": 1}')
    a = spec.factory(config, None)
    try:
        assert a.kind == "mock" and a.usage().capacity_bytes == 4096
    finally:
        a.close()
    with pytest.raises(ConfigError, match="capacity_bytes"):
        registry.parse('{"type": "mock", "capacity_bytes": "big"}')
