"""The storage backend contract suite: what a `StorageBackend` itself must do, as a pytest base class.

A backend's own part of the L2 behaviour: put, get into a caller's buffer, exists, delete, list,
usage, status, integrity. Threads, Futures, lookup locks, metrics and circuit breaking belong to
the standard wrappers, which `L2AdapterContract` tests once over an in-memory backend; a backend
author runs this suite (and may also run `L2AdapterContract` over `BackendL2Adapter(backend)`).

A test module subclasses `StorageBackendContract` (no `Test` prefix: pytest collects only the
subclasses) and provides:

- fixture `backend`: yields a fresh, empty backend and closes it afterwards;
- optionally fixture `capacity_limited_backend`: a fresh backend whose `usage().capacity_bytes`
  is set (a few tens of KiB is enough);
- class attributes `supports_listing` and `persists_bytes` (True: the hook
  `corrupt(backend, key)` flips one byte of the stored object in its backing store).

Needs only pytest and numpy (no torch); every test runs in milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from lmcache_adapters.testing.l2_data import SMALL_ELEMS, make_key, tensor_payload
from lmcache_core.errors import CorruptObjectError
from lmcache_core.keys import ObjectKey
from lmcache_core.ports import ListingNotSupportedError, StorageBackend

__all__ = ["StorageBackendContract"]


class StorageBackendContract:
    """Base class of every storage backend's contract tests (see the module docstring)."""

    supports_listing: bool = True
    persists_bytes: bool = False

    @pytest.fixture
    def backend(self) -> Iterator[StorageBackend]:
        raise NotImplementedError("a contract subclass must provide the `backend` fixture")

    @pytest.fixture
    def capacity_limited_backend(self) -> Iterator[StorageBackend]:
        pytest.skip("this backend's test module provides no capacity-limited backend")

    def corrupt(self, backend: StorageBackend, key: ObjectKey) -> None:
        """Flip one byte of the stored object for `key` in the backing store."""
        raise NotImplementedError("persisting backends must implement corrupt()")

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _get(backend: StorageBackend, key: ObjectKey, nbytes: int) -> bytes | None:
        buffer = bytearray(nbytes)
        return bytes(buffer) if backend.get_into(key, memoryview(buffer)) else None

    # ------------------------------------------------------------------ the port

    def test_implements_the_port(self, backend: StorageBackend) -> None:
        assert isinstance(backend, StorageBackend)
        assert isinstance(backend.kind, str) and backend.kind

    def test_put_then_get_into_a_buffer(self, backend: StorageBackend) -> None:
        key, payload = make_key(1), tensor_payload(seed=1)
        assert backend.put(key, payload) is True
        assert backend.exists(key) is True
        assert self._get(backend, key, payload.nbytes) == bytes(payload)

    def test_large_object(self, backend: StorageBackend) -> None:
        key, payload = make_key(2), tensor_payload(512 * 1024, seed=2)  # 1 MiB, a real chunk's order
        assert backend.put(key, payload) is True
        assert self._get(backend, key, payload.nbytes) == bytes(payload)

    def test_missing_key(self, backend: StorageBackend) -> None:
        key = make_key(3)
        assert backend.exists(key) is False
        assert self._get(backend, key, 64) is None
        assert backend.delete(key) is False
        assert backend.exists(key) is False, "a read or delete must not make a key appear"

    def test_wrong_size_buffer_is_false_and_keeps_the_object(self, backend: StorageBackend) -> None:
        key, payload = make_key(4), tensor_payload(seed=4)
        backend.put(key, payload)
        assert self._get(backend, key, payload.nbytes - 2) is None
        assert self._get(backend, key, payload.nbytes + 2) is None
        assert self._get(backend, key, payload.nbytes) == bytes(payload)

    def test_overwrite_keeps_the_latest(self, backend: StorageBackend) -> None:
        key = make_key(5)
        backend.put(key, tensor_payload(seed=1))
        second = tensor_payload(SMALL_ELEMS * 2, seed=2)
        assert backend.put(key, second) is True
        assert self._get(backend, key, second.nbytes) == bytes(second)
        if self.supports_listing:
            assert backend.list_keys(100).keys == [key]

    def test_keys_differing_only_in_salt_rank_or_model_are_distinct(self, backend: StorageBackend) -> None:
        keys = [make_key(1), make_key(1, cache_salt="t"), make_key(1, rank=1), make_key(1, model_name="contract/b")]
        payloads = [tensor_payload(seed=10 + i) for i in range(4)]
        for key, payload in zip(keys, payloads, strict=True):
            assert backend.put(key, payload) is True
        for key, payload in zip(keys, payloads, strict=True):
            assert self._get(backend, key, payload.nbytes) == bytes(payload)

    def test_delete_removes_once(self, backend: StorageBackend) -> None:
        key = make_key(6)
        backend.put(key, tensor_payload(seed=6))
        assert backend.delete(key) is True
        assert backend.delete(key) is False
        assert backend.exists(key) is False
        assert self._get(backend, key, SMALL_ELEMS * 2) is None

    # ------------------------------------------------------------------ listing

    def test_listing_pages_and_filters(self, backend: StorageBackend) -> None:
        if not self.supports_listing:
            with pytest.raises(ListingNotSupportedError):
                backend.list_keys(10)
            return
        a = [make_key(i) for i in range(5)]
        b = [make_key(i, model_name="contract/model-b", cache_salt="s") for i in range(5, 8)]
        for i, key in enumerate(a + b):
            backend.put(key, tensor_payload(64, seed=i))
        seen: list[ObjectKey] = []
        token: str | None = None
        for _ in range(20):
            page = backend.list_keys(3, token)
            assert len(page.keys) <= 3
            seen.extend(page.keys)
            token = page.next_page_token
            if token is None:
                break
        assert token is None and len(seen) == len(set(seen)) == 8 and set(seen) == set(a + b)
        assert set(backend.list_keys(100, model_name="contract/model-b").keys) == set(b)
        assert set(backend.list_keys(100, cache_salt="s").keys) == set(b)
        assert backend.list_keys(100, model_name="contract/nobody").keys == []

    # ------------------------------------------------------------------ usage, status, capacity

    def test_usage_follows_puts_and_deletes_by_salt(self, backend: StorageBackend) -> None:
        assert backend.usage().used_bytes == 0
        backend.put(make_key(1, cache_salt="a"), tensor_payload(seed=1))
        after_a = backend.usage()
        backend.put(make_key(2, cache_salt="b"), tensor_payload(seed=2))
        after_b = backend.usage()
        assert after_b.used_bytes > after_a.used_bytes > 0
        assert dict(after_b.bytes_by_salt).get("a") == after_a.used_bytes
        assert sum(after_b.bytes_by_salt.values()) == after_b.used_bytes
        backend.delete(make_key(2, cache_salt="b"))
        assert backend.usage().used_bytes == after_a.used_bytes

    def test_status_is_healthy_and_json(self, backend: StorageBackend) -> None:
        backend.put(make_key(1), tensor_payload(seed=1))
        report = backend.report_status()
        assert report["is_healthy"] is True
        json.dumps(report)

    def test_put_beyond_capacity_is_false(self, capacity_limited_backend: StorageBackend) -> None:
        backend = capacity_limited_backend
        capacity = backend.usage().capacity_bytes
        assert capacity is not None and capacity > 0
        elems = max(capacity // 5 // 2, 32)
        results = [backend.put(make_key(i), tensor_payload(elems, seed=i)) for i in range(8)]
        assert True in results and False in results
        assert backend.usage().used_bytes <= capacity
        assert [backend.exists(make_key(i)) for i in range(8)] == results

    # ------------------------------------------------------------------ integrity

    def test_corrupt_object_raises_and_is_removed(self, backend: StorageBackend) -> None:
        if not self.persists_bytes:
            pytest.skip("backend keeps no bytes that could be corrupted at rest")
        bad, good = make_key(1), make_key(2)
        payload = tensor_payload(seed=1)
        backend.put(bad, payload)
        backend.put(good, payload)
        self.corrupt(backend, bad)
        with pytest.raises(CorruptObjectError):
            backend.get_into(bad, memoryview(bytearray(payload.nbytes)))
        assert backend.exists(bad) is False, "a corrupt object must be removed"
        assert self._get(backend, good, payload.nbytes) == bytes(payload)
