"""The `mock` L2 adapter: objects in a dict, with optional capacity and simulated bandwidth."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from lmcache_adapters.l2.batch import (
    acquire_lock_count,
    check_lengths,
    failed_future,
    release_lock_count,
)
from lmcache_adapters.l2.listing import check_page_args, page_of
from lmcache_core.errors import ConfigError, NotInitializedError
from lmcache_core.keys import ObjectKey
from lmcache_core.plugin.registry import COMMON_FIELDS, ConfigField, config_field
from lmcache_core.ports import KeyPage, L2Usage

__all__ = ["MOCK_FIELDS", "MockL2Adapter", "create_mock_adapter"]

_T = TypeVar("_T")

MAX_WORKERS_LIMIT = 64

MOCK_FIELDS: Mapping[str, ConfigField] = {
    "capacity_bytes": config_field(int, help="bytes the adapter may hold; a store that does not fit fails (default: unbounded)"),
    "bandwidth_gbps": config_field(
        float, help="simulated transfer rate in gigabytes (1e9 bytes) per second for stores and loads (default: instant)"
    ),
    "max_workers": config_field(int, help=f"worker threads running operations, 1..{MAX_WORKERS_LIMIT} (default 2)"),
}


class MockL2Adapter:
    """An in-memory L2 adapter: a dict of bytes behind a small thread pool (tests, demos, benchmarks).

    Operations run on the adapter's worker threads, so a simulated slow tier (`bandwidth_gbps`)
    delays the Futures, never the caller. `sleep(seconds)` is the delay hook (default: a wait
    that `close()` interrupts; an operation cut short by close fails)."""

    kind = "mock"

    def __init__(
        self,
        *,
        capacity_bytes: int | None = None,
        bandwidth_gbps: float | None = None,
        max_workers: int = 2,
        name: str = "mock",
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        _check_int("capacity_bytes", capacity_bytes, minimum=0, optional=True)
        if bandwidth_gbps is not None and (
            isinstance(bandwidth_gbps, bool) or not isinstance(bandwidth_gbps, int | float) or not bandwidth_gbps > 0
        ):
            raise ConfigError(f"bandwidth_gbps must be a number > 0, got {bandwidth_gbps!r}")
        _check_int("max_workers", max_workers, minimum=1, maximum=MAX_WORKERS_LIMIT)
        self.name = name
        self._capacity = capacity_bytes
        self._bytes_per_second = float(bandwidth_gbps) * 1e9 if bandwidth_gbps is not None else None
        self._bandwidth_gbps = bandwidth_gbps
        self._sleep = sleep
        self._objects: dict[ObjectKey, bytes] = {}
        self._locks: dict[ObjectKey, int] = {}
        self._bytes_by_salt: dict[str, int] = {}
        self._used = 0
        self._pending = 0
        # Listing order by storage name, rebuilt lazily after a mutation.
        self._sorted_names: list[str] | None = None
        self._name_to_key: dict[str, ObjectKey] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"lmcache-l2-{name}")

    # ------------------------------------------------------------------ async operations

    def submit_store(self, keys: Sequence[ObjectKey], payloads: Sequence[memoryview]) -> Future[list[bool]]:
        """Store each payload (copied on a worker thread); per key False when it does not fit."""
        check_lengths(keys, payloads, "payloads")
        keys, payloads = list(keys), list(payloads)
        return self._submit(self._store, keys, payloads)

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Hit bitmap; every hit takes one lock count until `unlock`."""
        return self._submit(self._lookup_and_lock, list(keys))

    def submit_load(self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]) -> Future[list[bool]]:
        """Copy stored bytes into the buffers; False for a missing key or a buffer of another length."""
        check_lengths(keys, buffers, "buffers")
        return self._submit(self._load, list(keys), list(buffers))

    # ------------------------------------------------------------------ synchronous operations

    def unlock(self, keys: Sequence[ObjectKey]) -> None:
        """Drop one lock count per key; unknown or unlocked keys are ignored."""
        with self._lock:
            for key in keys:
                release_lock_count(self._locks, key)

    def delete(self, keys: Sequence[ObjectKey]) -> list[bool]:
        """Remove unlocked keys; False for locked or absent ones."""
        results: list[bool] = []
        with self._lock:
            for key in keys:
                if self._locks.get(key, 0) > 0 or key not in self._objects:
                    results.append(False)
                    continue
                self._remove_locked(key)
                results.append(True)
        return results

    def list_keys(
        self,
        page_size: int,
        page_token: str | None = None,
        *,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> KeyPage:
        """Keys in storage-name order; the page token is the last listed key's storage name.

        Raises ValueError for a page_size < 1 or a page token that is not a storage name."""
        check_page_args(page_size, page_token)
        with self._lock:
            names = self._sorted_names_locked()
            return page_of(
                names, self._name_to_key.__getitem__, page_size, page_token, model_name=model_name, cache_salt=cache_salt
            )

    def usage(self) -> L2Usage:
        """Bytes held, the configured capacity, and bytes per cache_salt (salts holding nothing omitted)."""
        with self._lock:
            return L2Usage(used_bytes=self._used, capacity_bytes=self._capacity, bytes_by_salt=dict(self._bytes_by_salt))

    def report_status(self) -> dict[str, Any]:
        """Counts and bytes for /status; unhealthy once closed."""
        with self._lock:
            return {
                "is_healthy": not self._closed.is_set(),
                "type": type(self).__name__,
                "kind": self.kind,
                "name": self.name,
                "stored_object_count": len(self._objects),
                "locked_key_count": len(self._locks),
                "used_bytes": self._used,
                "capacity_bytes": self._capacity,
                "bandwidth_gbps": self._bandwidth_gbps,
                "pending_operations": self._pending,
                "closed": self._closed.is_set(),
            }

    def close(self) -> None:
        """Cancel queued operations, interrupt simulated transfers, wait for the workers. Idempotent."""
        self._closed.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __repr__(self) -> str:
        return f"MockL2Adapter(name={self.name!r}, capacity_bytes={self._capacity}, bandwidth_gbps={self._bandwidth_gbps})"

    # ------------------------------------------------------------------ workers

    def _submit(self, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        if self._closed.is_set():
            return failed_future(self._closed_error())
        with self._lock:
            self._pending += 1
        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError:  # the executor shut down between the check and the submit
            with self._lock:
                self._pending -= 1
            return failed_future(self._closed_error())
        future.add_done_callback(self._operation_done)
        return future

    def _operation_done(self, _future: Future[Any]) -> None:
        with self._lock:
            self._pending -= 1

    def _closed_error(self) -> NotInitializedError:
        return NotInitializedError(f"L2 adapter {self.name!r} (mock) is closed")

    def _transfer(self, nbytes: int) -> bool:
        """Simulate moving `nbytes`; False when close() interrupted it."""
        if self._bytes_per_second is None or nbytes == 0:
            return not self._closed.is_set()
        seconds = nbytes / self._bytes_per_second
        if self._sleep is not None:
            self._sleep(seconds)
            return not self._closed.is_set()
        return not self._closed.wait(seconds)

    def _store(self, keys: list[ObjectKey], payloads: list[memoryview]) -> list[bool]:
        blobs = [_to_bytes(p) for p in payloads]
        if not self._transfer(sum(len(b) for b in blobs)):
            return [False] * len(keys)
        results: list[bool] = []
        with self._lock:
            for key, blob in zip(keys, blobs, strict=True):
                old = self._objects.get(key)
                used_after = self._used - (len(old) if old is not None else 0) + len(blob)
                if self._capacity is not None and used_after > self._capacity:
                    results.append(False)
                    continue
                if old is not None:
                    self._remove_locked(key, keep_lock=True)
                self._objects[key] = blob
                self._used += len(blob)
                self._bytes_by_salt[key.cache_salt] = self._bytes_by_salt.get(key.cache_salt, 0) + len(blob)
                if old is None:
                    self._sorted_names = None
                results.append(True)
        return results

    def _lookup_and_lock(self, keys: list[ObjectKey]) -> list[bool]:
        hits: list[bool] = []
        with self._lock:
            for key in keys:
                hit = key in self._objects
                if hit:
                    acquire_lock_count(self._locks, key)
                hits.append(hit)
        return hits

    def _load(self, keys: list[ObjectKey], buffers: list[memoryview]) -> list[bool]:
        with self._lock:
            blobs = [self._objects.get(key) for key in keys]
        if not self._transfer(sum(len(b) for b in blobs if b is not None)):
            return [False] * len(keys)
        results: list[bool] = []
        for blob, buffer in zip(blobs, buffers, strict=True):
            results.append(blob is not None and _copy_into(buffer, blob))
        return results

    # ------------------------------------------------------------------ bookkeeping (hold self._lock)

    def _remove_locked(self, key: ObjectKey, *, keep_lock: bool = False) -> None:
        blob = self._objects.pop(key)
        self._used -= len(blob)
        remaining = self._bytes_by_salt[key.cache_salt] - len(blob)
        if remaining:
            self._bytes_by_salt[key.cache_salt] = remaining
        else:
            del self._bytes_by_salt[key.cache_salt]
        if not keep_lock:
            self._locks.pop(key, None)
            self._sorted_names = None

    def _sorted_names_locked(self) -> list[str]:
        if self._sorted_names is None:
            self._name_to_key = {key.to_storage_name(): key for key in self._objects}
            self._sorted_names = sorted(self._name_to_key)
        return self._sorted_names


def create_mock_adapter(config: dict[str, Any], services: Any) -> MockL2Adapter:
    """Factory registered for kind `mock`: `config` is the `--l2-adapter` JSON without `type`."""
    del services  # the mock needs nothing from the server
    unknown = sorted(set(config) - set(MOCK_FIELDS) - set(COMMON_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown field(s) for L2 adapter 'mock': {', '.join(unknown)} (accepted: {', '.join(sorted(MOCK_FIELDS))})"
        )
    for field_name, spec in MOCK_FIELDS.items():
        value = config.get(field_name)
        if value is not None and not spec.accepts(value):
            raise ConfigError(f"field {field_name!r} of L2 adapter 'mock' must be {spec.type_names()}, got {value!r}")
    name = config.get("name") or "mock"
    max_workers = config.get("max_workers")
    return MockL2Adapter(
        capacity_bytes=config.get("capacity_bytes"),
        bandwidth_gbps=config.get("bandwidth_gbps"),
        max_workers=2 if max_workers is None else max_workers,
        name=str(name),
    )


# ---------------------------------------------------------------------- helpers


def _check_int(field_name: str, value: Any, *, minimum: int, maximum: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigError(f"{field_name} must be an integer {bounds}, got {value!r}")


def _to_bytes(payload: memoryview) -> bytes:
    # One copy on the worker thread: the caller's view is only valid until the Future completes.
    return bytes(payload)


def _copy_into(buffer: memoryview, blob: bytes) -> bool:
    try:
        view = memoryview(buffer)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
    except TypeError:  # non-contiguous: cannot be filled in one copy
        return False
    if view.readonly or view.nbytes != len(blob):
        return False
    view[:] = blob
    return True
