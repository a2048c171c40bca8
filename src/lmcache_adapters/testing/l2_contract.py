"""The L2 adapter contract suite: behaviour every `L2Adapter` must show, as a pytest base class.

An adapter's test module subclasses `L2AdapterContract` (the name has no `Test` prefix, so pytest
collects only the subclasses) and provides:

- fixture `adapter`: yields a fresh, empty adapter and closes it afterwards;
- optionally fixture `capacity_limited_adapter`: a fresh adapter whose `usage().capacity_bytes`
  is set (a few tens of KiB is enough); stores that do not fit must fail for that key;
- class attributes `supports_listing` (True: `list_keys` works; False: it raises
  ListingNotSupportedError) and `persists_bytes` (True: the corrupt-object tests apply and the
  hook `corrupt(adapter, key)` flips one byte of the stored object in its backing store);
  `concurrent_threads` / `concurrent_batches` / `concurrent_batch_size` size the threaded test;
- optionally the hook `assert_payload_equal(original, loaded)` for lossy wrappers (default:
  bit-exact).

Every payload is real bfloat16 values viewed as bytes (made with numpy: the suite needs no
torch), every wait is bounded by `TIMEOUT` seconds, and the whole class runs in a few seconds per
adapter. The wrappers every backend gets run this suite once over an in-memory backend
(`tests/contract/test_stack_contract.py`); a backend's own part is `StorageBackendContract`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import pytest

from lmcache_adapters.testing.l2_data import SMALL_ELEMS, make_key, tensor_payload
from lmcache_core.keys import ObjectKey
from lmcache_core.ports import L2Adapter, ListingNotSupportedError

__all__ = ["SMALL_ELEMS", "TIMEOUT", "L2AdapterContract", "make_key", "tensor_payload"]

TIMEOUT = 10.0
"""Seconds any single Future may take before the suite calls the adapter hung."""


def _result(future: Future[list[bool]]) -> list[bool]:
    result = future.result(timeout=TIMEOUT)
    assert isinstance(result, list), (
        f"a Future must complete with a list, got {type(result).__name__}"
    )
    return result


class L2AdapterContract:
    """Base class of every L2 adapter's contract tests (see the module docstring)."""

    supports_listing: bool = True
    persists_bytes: bool = False
    # 4 threads x 10 batches x 8 keys; a slow backend (a local S3 emulator) may lower the counts
    concurrent_threads: int = 4
    concurrent_batches: int = 10
    concurrent_batch_size: int = 8

    # ------------------------------------------------------------------ hooks for subclasses

    @pytest.fixture
    def adapter(self) -> Iterator[L2Adapter]:
        raise NotImplementedError("a contract subclass must provide the `adapter` fixture")

    @pytest.fixture
    def capacity_limited_adapter(self) -> Iterator[L2Adapter]:
        pytest.skip("this adapter's test module provides no capacity-limited adapter")

    def corrupt(self, adapter: L2Adapter, key: ObjectKey) -> None:
        """Flip one byte of the stored object for `key` in the backing store."""
        raise NotImplementedError("persisting adapters must implement corrupt()")

    def assert_payload_equal(self, original: memoryview, loaded: memoryview | bytearray) -> None:
        """Default: the loaded bytes are the stored bytes, bit for bit."""
        assert bytes(loaded) == bytes(original), "loaded payload differs from the stored one"

    # ------------------------------------------------------------------ helpers

    def _store(
        self, adapter: L2Adapter, keys: Sequence[ObjectKey], payloads: Sequence[memoryview]
    ) -> list[bool]:
        return _result(adapter.submit_store(list(keys), list(payloads)))

    def _load(
        self, adapter: L2Adapter, keys: Sequence[ObjectKey], sizes: Sequence[int]
    ) -> tuple[list[bool], list[bytearray]]:
        buffers = [bytearray(n) for n in sizes]
        ok = _result(adapter.submit_load(list(keys), [memoryview(b) for b in buffers]))
        return ok, buffers

    def _lookup(
        self, adapter: L2Adapter, keys: Sequence[ObjectKey], *, unlock: bool = True
    ) -> list[bool]:
        hits = _result(adapter.submit_lookup_and_lock(list(keys)))
        if unlock:
            adapter.unlock([k for k, hit in zip(keys, hits, strict=True) if hit])
        return hits

    # ------------------------------------------------------------------ round trips and misses

    def test_store_lookup_load_round_trip(self, adapter: L2Adapter) -> None:
        keys = [make_key(i) for i in range(4)]
        payloads = [tensor_payload(SMALL_ELEMS * (i + 1), seed=i) for i in range(4)]
        assert self._store(adapter, keys, payloads) == [True] * 4
        assert self._lookup(adapter, keys) == [True] * 4
        ok, buffers = self._load(adapter, keys, [p.nbytes for p in payloads])
        assert ok == [True] * 4
        for original, loaded in zip(payloads, buffers, strict=True):
            self.assert_payload_equal(original, loaded)

    def test_large_object_round_trip(self, adapter: L2Adapter) -> None:
        key = make_key(7)
        payload = tensor_payload(512 * 1024, seed=7)  # 1 MiB, the order of a real KV chunk
        assert self._store(adapter, [key], [payload]) == [True]
        ok, buffers = self._load(adapter, [key], [payload.nbytes])
        assert ok == [True]
        self.assert_payload_equal(payload, buffers[0])

    def test_empty_batches_complete(self, adapter: L2Adapter) -> None:
        assert _result(adapter.submit_store([], [])) == []
        assert _result(adapter.submit_lookup_and_lock([])) == []
        assert _result(adapter.submit_load([], [])) == []
        assert adapter.delete([]) == []

    def test_missing_keys_miss(self, adapter: L2Adapter) -> None:
        keys = [make_key(100), make_key(101)]
        assert self._lookup(adapter, keys) == [False, False]
        ok, _ = self._load(adapter, keys, [64, 64])
        assert ok == [False, False]
        # a lookup or load of a missing key must not make it appear
        assert self._lookup(adapter, keys) == [False, False]

    def test_mixed_batch_gives_exact_bitmap(self, adapter: L2Adapter) -> None:
        stored = [make_key(i) for i in (0, 2, 3, 6)]
        self._store(adapter, stored, [tensor_payload(seed=i) for i in range(4)])
        probe = [make_key(i) for i in range(8)]
        expected = [i in (0, 2, 3, 6) for i in range(8)]
        assert self._lookup(adapter, probe) == expected
        ok, buffers = self._load(adapter, probe, [SMALL_ELEMS * 2] * 8)
        assert ok == expected
        for j, i in enumerate((0, 2, 3, 6)):
            self.assert_payload_equal(tensor_payload(seed=j), buffers[i])

    def test_keys_differing_only_in_salt_rank_or_model_are_distinct(
        self, adapter: L2Adapter
    ) -> None:
        keys = [
            make_key(1),
            make_key(1, cache_salt="tenant-a"),
            make_key(1, rank=1),
            make_key(1, model_name="contract/model-b"),
        ]
        payloads = [tensor_payload(seed=10 + i) for i in range(4)]
        assert self._store(adapter, keys, payloads) == [True] * 4
        ok, buffers = self._load(adapter, keys, [p.nbytes for p in payloads])
        assert ok == [True] * 4
        for original, loaded in zip(payloads, buffers, strict=True):
            self.assert_payload_equal(original, loaded)

    def test_overwrite_serves_the_latest_payload(self, adapter: L2Adapter) -> None:
        key = make_key(5)
        first, second = tensor_payload(seed=1), tensor_payload(seed=2)
        assert self._store(adapter, [key], [first]) == [True]
        assert self._store(adapter, [key], [second]) == [True]
        ok, buffers = self._load(adapter, [key], [second.nbytes])
        assert ok == [True]
        self.assert_payload_equal(second, buffers[0])
        if self.supports_listing:
            assert adapter.list_keys(100).keys == [key]

    def test_wrong_size_buffer_is_a_failed_load(self, adapter: L2Adapter) -> None:
        key = make_key(9)
        payload = tensor_payload(seed=9)
        self._store(adapter, [key], [payload])
        ok, _ = self._load(adapter, [key, key], [payload.nbytes - 2, payload.nbytes + 2])
        assert ok == [False, False]
        # the object itself is intact: a right-sized buffer still loads it
        ok, buffers = self._load(adapter, [key], [payload.nbytes])
        assert ok == [True]
        self.assert_payload_equal(payload, buffers[0])

    # ------------------------------------------------------------------ locks and delete

    def test_locked_key_cannot_be_deleted_until_unlocked(self, adapter: L2Adapter) -> None:
        key, other = make_key(1), make_key(2)
        self._store(adapter, [key, other], [tensor_payload(seed=1), tensor_payload(seed=2)])
        assert self._lookup(adapter, [key], unlock=False) == [True]
        assert adapter.delete([key, other]) == [False, True]
        assert self._lookup(adapter, [key, other]) == [
            True,
            False,
        ]  # this lookup's lock is released
        adapter.unlock([key])
        assert adapter.delete([key]) == [True]
        assert self._lookup(adapter, [key]) == [False]

    def test_locks_are_counted(self, adapter: L2Adapter) -> None:
        key = make_key(3)
        self._store(adapter, [key], [tensor_payload(seed=3)])
        self._lookup(adapter, [key], unlock=False)
        self._lookup(adapter, [key], unlock=False)
        adapter.unlock([key])
        assert adapter.delete([key]) == [False], "one of two lookups still holds the key"
        adapter.unlock([key])
        assert adapter.delete([key]) == [True]

    def test_unlock_of_unknown_or_unlocked_keys_is_ignored(self, adapter: L2Adapter) -> None:
        key = make_key(4)
        adapter.unlock([make_key(404)])
        self._store(adapter, [key], [tensor_payload(seed=4)])
        adapter.unlock([key])  # never locked
        assert adapter.delete([key]) == [True]

    def test_a_missed_lookup_takes_no_lock(self, adapter: L2Adapter) -> None:
        key = make_key(6)
        assert self._lookup(adapter, [key], unlock=False) == [False]
        self._store(adapter, [key], [tensor_payload(seed=6)])
        assert adapter.delete([key]) == [True]

    def test_delete_is_idempotent(self, adapter: L2Adapter) -> None:
        key = make_key(8)
        self._store(adapter, [key], [tensor_payload(seed=8)])
        assert adapter.delete([key]) == [True]
        assert adapter.delete([key]) == [False]
        assert adapter.delete([make_key(999)]) == [False]
        assert self._lookup(adapter, [key]) == [False]
        ok, _ = self._load(adapter, [key], [SMALL_ELEMS * 2])
        assert ok == [False]

    # ------------------------------------------------------------------ listing

    def test_listing_pages_cover_every_key_once(self, adapter: L2Adapter) -> None:
        if not self.supports_listing:
            pytest.skip("adapter does not support listing")
        keys = [make_key(i) for i in range(11)]
        self._store(adapter, keys, [tensor_payload(64, seed=i) for i in range(11)])
        seen: list[ObjectKey] = []
        token: str | None = None
        for _ in range(20):  # 11 keys in pages of 3 is 4 pages; bound the loop anyway
            page = adapter.list_keys(3, token)
            assert len(page.keys) <= 3
            seen.extend(page.keys)
            token = page.next_page_token
            if token is None:
                break
            assert isinstance(token, str)
        assert token is None, "listing did not terminate"
        assert len(seen) == len(set(seen)) == 11
        assert set(seen) == set(keys)
        whole = adapter.list_keys(1000)
        assert set(whole.keys) == set(keys) and whole.next_page_token is None

    def test_listing_filters_by_model_and_salt(self, adapter: L2Adapter) -> None:
        if not self.supports_listing:
            pytest.skip("adapter does not support listing")
        a = [make_key(i) for i in range(3)]
        b = [make_key(i, model_name="contract/model-b") for i in range(3, 5)]
        a_salted = [make_key(i, cache_salt="tenant-x") for i in range(5, 9)]
        everything = a + b + a_salted
        self._store(
            adapter, everything, [tensor_payload(64, seed=i) for i in range(len(everything))]
        )

        def collect(**filters: str) -> set[ObjectKey]:
            out: list[ObjectKey] = []
            token: str | None = None
            for _ in range(20):
                page = adapter.list_keys(2, token, **filters)
                out.extend(page.keys)
                token = page.next_page_token
                if token is None:
                    break
            assert token is None
            assert len(out) == len(set(out)), "a key was listed twice"
            return set(out)

        assert collect(model_name="contract/model-b") == set(b)
        assert collect(cache_salt="tenant-x") == set(a_salted)
        assert collect(model_name="contract/model-a", cache_salt="tenant-x") == set(a_salted)
        assert collect(model_name="contract/model-a") == set(a + a_salted)
        assert collect(model_name="contract/nobody") == set()
        assert collect() == set(everything)

    def test_listing_of_an_empty_adapter(self, adapter: L2Adapter) -> None:
        if not self.supports_listing:
            pytest.skip("adapter does not support listing")
        page = adapter.list_keys(10)
        assert page.keys == [] and page.next_page_token is None

    def test_listing_not_supported_raises(self, adapter: L2Adapter) -> None:
        if self.supports_listing:
            pytest.skip("adapter supports listing")
        with pytest.raises(ListingNotSupportedError):
            adapter.list_keys(10)

    # ------------------------------------------------------------------ usage and status

    def test_usage_grows_with_stores_and_splits_by_salt(self, adapter: L2Adapter) -> None:
        empty = adapter.usage()
        assert empty.used_bytes == 0
        self._store(adapter, [make_key(1, cache_salt="salt-a")], [tensor_payload(seed=1)])
        after_a = adapter.usage()
        assert after_a.used_bytes > 0
        self._store(
            adapter,
            [make_key(2, cache_salt="salt-b"), make_key(3, cache_salt="salt-b")],
            [tensor_payload(seed=2), tensor_payload(seed=3)],
        )
        after_b = adapter.usage()
        assert after_b.used_bytes > after_a.used_bytes
        by_salt = dict(after_b.bytes_by_salt)
        assert by_salt.get("salt-a", 0) == after_a.used_bytes, (
            "storing under salt-b changed salt-a's bytes"
        )
        assert by_salt.get("salt-b", 0) > 0
        assert sum(by_salt.values()) == after_b.used_bytes
        adapter.delete([make_key(2, cache_salt="salt-b"), make_key(3, cache_salt="salt-b")])
        after_delete = adapter.usage()
        assert after_delete.used_bytes == after_a.used_bytes
        assert dict(after_delete.bytes_by_salt).get("salt-b", 0) == 0

    def test_report_status_is_healthy_and_json_serialisable(self, adapter: L2Adapter) -> None:
        self._store(adapter, [make_key(1)], [tensor_payload(seed=1)])
        report = adapter.report_status()
        assert report["is_healthy"] is True
        json.dumps(report)
        assert isinstance(adapter.kind, str) and adapter.kind

    # ------------------------------------------------------------------ capacity

    def test_store_beyond_capacity_fails_for_that_key(
        self, capacity_limited_adapter: L2Adapter
    ) -> None:
        adapter = capacity_limited_adapter
        capacity = adapter.usage().capacity_bytes
        assert capacity is not None and capacity > 0
        elems = max(capacity // 5 // 2, 32)  # 4 fit even with per-object overhead, 8 never do
        results: list[bool] = []
        payloads: list[memoryview] = []
        for i in range(8):
            payloads.append(tensor_payload(elems, seed=i))
            results.extend(self._store(adapter, [make_key(i)], [payloads[-1]]))
        assert True in results and False in results, results
        assert adapter.usage().used_bytes <= capacity
        first_failed = results.index(False)
        ok, buffers = self._load(
            adapter, [make_key(i) for i in range(8)], [p.nbytes for p in payloads]
        )
        assert ok == results, "exactly the stores reported True are served"
        self.assert_payload_equal(payloads[0], buffers[0])
        # deleting frees room for the refused key
        assert adapter.delete([make_key(i) for i in range(first_failed)]) == [True] * first_failed
        assert self._store(adapter, [make_key(first_failed)], [payloads[first_failed]]) == [True]

    # ------------------------------------------------------------------ concurrency

    def test_concurrent_batches_from_several_threads(self, adapter: L2Adapter) -> None:
        n_threads, n_batches, batch = (
            self.concurrent_threads,
            self.concurrent_batches,
            self.concurrent_batch_size,
        )
        errors: list[BaseException] = []

        def worker(t: int) -> None:
            try:
                for b in range(n_batches):
                    base = (t * n_batches + b) * batch
                    keys = [make_key(1000 + base + j) for j in range(batch)]
                    payloads = [tensor_payload(128, seed=base + j) for j in range(batch)]
                    assert self._store(adapter, keys, payloads) == [True] * batch
                    assert self._lookup(adapter, keys) == [True] * batch
                    ok, buffers = self._load(adapter, keys, [p.nbytes for p in payloads])
                    assert ok == [True] * batch
                    for original, loaded in zip(payloads, buffers, strict=True):
                        self.assert_payload_equal(original, loaded)
            except BaseException as exc:  # reported on the main thread below
                errors.append(exc)

        threads = [
            threading.Thread(target=worker, args=(t,), daemon=True) for t in range(n_threads)
        ]
        for th in threads:
            th.start()
        deadline = time.monotonic() + TIMEOUT * 3
        for th in threads:
            th.join(timeout=max(deadline - time.monotonic(), 0.0))
            assert not th.is_alive(), "a worker thread hung"
        if errors:
            raise errors[0]
        if self.supports_listing:
            assert len(adapter.list_keys(10_000).keys) == n_threads * n_batches * batch

    # ------------------------------------------------------------------ integrity

    def test_corrupt_object_is_a_miss_and_removed(self, adapter: L2Adapter) -> None:
        if not self.persists_bytes:
            pytest.skip("adapter keeps no bytes that could be corrupted at rest")
        bad, good = make_key(1), make_key(2)
        payloads = [tensor_payload(seed=1), tensor_payload(seed=2)]
        assert self._store(adapter, [bad, good], payloads) == [True, True]
        self.corrupt(adapter, bad)
        ok, buffers = self._load(adapter, [bad, good], [p.nbytes for p in payloads])
        assert ok == [False, True], "a corrupt object must never load as a hit"
        self.assert_payload_equal(payloads[1], buffers[1])
        assert self._lookup(adapter, [bad, good]) == [False, True], (
            "the corrupt object must be gone"
        )
        ok, _ = self._load(adapter, [bad], [payloads[0].nbytes])
        assert ok == [False]
        # the key can be stored again and is then served
        assert self._store(adapter, [bad], [payloads[0]]) == [True]
        ok, buffers = self._load(adapter, [bad], [payloads[0].nbytes])
        assert ok == [True]
        self.assert_payload_equal(payloads[0], buffers[0])

    # ------------------------------------------------------------------ close

    def test_close_is_idempotent_and_later_submits_fail(self, adapter: L2Adapter) -> None:
        key = make_key(1)
        payload = tensor_payload(seed=1)
        self._store(adapter, [key], [payload])
        adapter.close()
        adapter.close()
        futures: list[Future[Any]] = [
            adapter.submit_store([make_key(2)], [payload]),
            adapter.submit_lookup_and_lock([key]),
            adapter.submit_load([key], [memoryview(bytearray(payload.nbytes))]),
        ]
        for fut in futures:
            try:
                result = fut.result(timeout=TIMEOUT)
            except Exception:
                continue  # a failed Future is an accepted answer
            assert result == [False], f"after close a submit must fail, got {result}"
