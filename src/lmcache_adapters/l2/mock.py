"""The `mock` L2 adapter: objects in a dict, with optional capacity and simulated bandwidth."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from lmcache_adapters.l2.listing import check_page_args, page_of
from lmcache_adapters.l2.stack import BackendL2Adapter, StackContext
from lmcache_core.errors import ConfigError
from lmcache_core.keys import ObjectKey
from lmcache_core.plugin.registry import COMMON_FIELDS, ConfigField, config_field
from lmcache_core.ports import KeyPage, L2Usage, MetricsSink

__all__ = ["MOCK_FIELDS", "MockBackend", "MockL2Adapter", "create_mock_adapter"]

MAX_WORKERS_LIMIT = 64

MOCK_FIELDS: Mapping[str, ConfigField] = {
    "capacity_bytes": config_field(int, help="bytes the adapter may hold; a store that does not fit fails (default: unbounded)"),
    "bandwidth_gbps": config_field(
        float, help="simulated transfer rate in gigabytes (1e9 bytes) per second for stores and loads (default: instant)"
    ),
    "max_workers": config_field(int, help=f"worker threads running operations, 1..{MAX_WORKERS_LIMIT} (default 2)"),
}


class MockBackend:
    """An in-memory storage backend: a dict of bytes, with an optional capacity and a simulated
    link speed (tests, demos, benchmarks). `sleep(seconds)` is the delay hook (default: a wait
    that `interrupt()` cuts short; a transfer cut short fails its key)."""

    kind = "mock"

    def __init__(
        self,
        *,
        capacity_bytes: int | None = None,
        bandwidth_gbps: float | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        _check_int("capacity_bytes", capacity_bytes, minimum=0, optional=True)
        if bandwidth_gbps is not None and (
            isinstance(bandwidth_gbps, bool) or not isinstance(bandwidth_gbps, int | float) or not bandwidth_gbps > 0
        ):
            raise ConfigError(f"bandwidth_gbps must be a number > 0, got {bandwidth_gbps!r}")
        self._capacity = capacity_bytes
        self._bytes_per_second = float(bandwidth_gbps) * 1e9 if bandwidth_gbps is not None else None
        self._bandwidth_gbps = bandwidth_gbps
        self._sleep = sleep
        self._objects: dict[ObjectKey, bytes] = {}
        self._bytes_by_salt: dict[str, int] = {}
        self._used = 0
        # Listing order by storage name, rebuilt lazily after a mutation.
        self._sorted_names: list[str] | None = None
        self._name_to_key: dict[str, ObjectKey] = {}
        self._lock = threading.Lock()
        self._interrupted = threading.Event()

    def put(self, key: ObjectKey, payload: memoryview) -> bool:
        """Copy the payload in; False when it does not fit the capacity."""
        blob = bytes(payload)  # one copy: the caller's view is only valid during the call
        if not self._transfer(len(blob)):
            return False
        with self._lock:
            old = self._objects.get(key)
            used_after = self._used - (len(old) if old is not None else 0) + len(blob)
            if self._capacity is not None and used_after > self._capacity:
                return False
            if old is not None:
                self._remove_locked(key)
            self._objects[key] = blob
            self._used += len(blob)
            self._bytes_by_salt[key.cache_salt] = self._bytes_by_salt.get(key.cache_salt, 0) + len(blob)
            self._sorted_names = None
        return True

    def get_into(self, key: ObjectKey, buffer: memoryview) -> bool:
        with self._lock:
            blob = self._objects.get(key)
        if blob is None or not self._transfer(len(blob)) or buffer.nbytes != len(blob):
            return False
        buffer[:] = blob
        return True

    def exists(self, key: ObjectKey) -> bool:
        with self._lock:
            return key in self._objects

    def delete(self, key: ObjectKey) -> bool:
        with self._lock:
            if key not in self._objects:
                return False
            self._remove_locked(key)
            return True

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
        with self._lock:
            return {
                "is_healthy": True,
                "kind": self.kind,
                "stored_object_count": len(self._objects),
                "used_bytes": self._used,
                "capacity_bytes": self._capacity,
                "bandwidth_gbps": self._bandwidth_gbps,
            }

    def interrupt(self) -> None:
        """Cut simulated transfers short (close does this before waiting for them)."""
        self._interrupted.set()

    def close(self) -> None:
        self._interrupted.set()

    def __repr__(self) -> str:
        return f"MockBackend(capacity_bytes={self._capacity}, bandwidth_gbps={self._bandwidth_gbps})"

    def _transfer(self, nbytes: int) -> bool:
        """Simulate moving `nbytes`; False when interrupted."""
        if self._bytes_per_second is None or nbytes == 0:
            return not self._interrupted.is_set()
        seconds = nbytes / self._bytes_per_second
        if self._sleep is not None:
            self._sleep(seconds)
            return not self._interrupted.is_set()
        return not self._interrupted.wait(seconds)

    def _remove_locked(self, key: ObjectKey) -> None:
        blob = self._objects.pop(key)
        self._used -= len(blob)
        remaining = self._bytes_by_salt[key.cache_salt] - len(blob)
        if remaining:
            self._bytes_by_salt[key.cache_salt] = remaining
        else:
            del self._bytes_by_salt[key.cache_salt]
        self._sorted_names = None

    def _sorted_names_locked(self) -> list[str]:
        if self._sorted_names is None:
            self._name_to_key = {key.to_storage_name(): key for key in self._objects}
            self._sorted_names = sorted(self._name_to_key)
        return self._sorted_names


class MockL2Adapter(BackendL2Adapter):
    """The `mock` kind: a MockBackend behind the standard L2 stack (operations run on the
    adapter's worker threads, so a simulated slow tier delays the Futures, never the caller)."""

    backend: MockBackend

    def __init__(
        self,
        *,
        capacity_bytes: int | None = None,
        bandwidth_gbps: float | None = None,
        max_workers: int = 2,
        name: str = "mock",
        sleep: Callable[[float], None] | None = None,
        metrics: MetricsSink | None = None,
    ) -> None:
        _check_int("max_workers", max_workers, minimum=1, maximum=MAX_WORKERS_LIMIT)
        super().__init__(
            MockBackend(capacity_bytes=capacity_bytes, bandwidth_gbps=bandwidth_gbps, sleep=sleep),
            name=name,
            max_workers=max_workers,
            metrics=metrics,
            split_batches=False,  # memory speed: a batch stores in order (capacity fills front first)
        )


def create_mock_adapter(config: dict[str, Any], services: Any) -> MockL2Adapter:
    """Factory registered for kind `mock`: `config` is the `--l2-adapter` JSON without `type`."""
    unknown = sorted(set(config) - set(MOCK_FIELDS) - set(COMMON_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown field(s) for L2 adapter 'mock': {', '.join(unknown)} (accepted: {', '.join(sorted(MOCK_FIELDS))})"
        )
    for field_name, spec in MOCK_FIELDS.items():
        value = config.get(field_name)
        if value is not None and not spec.accepts(value):
            raise ConfigError(f"field {field_name!r} of L2 adapter 'mock' must be {spec.type_names()}, got {value!r}")
    context = StackContext.of(services, config, "mock")
    max_workers = config.get("max_workers")
    return MockL2Adapter(
        capacity_bytes=config.get("capacity_bytes"),
        bandwidth_gbps=config.get("bandwidth_gbps"),
        max_workers=2 if max_workers is None else max_workers,
        name=context.name,
        metrics=context.metrics,
    )


# ---------------------------------------------------------------------- helpers


def _check_int(field_name: str, value: Any, *, minimum: int, maximum: int | None = None, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigError(f"{field_name} must be an integer {bounds}, got {value!r}")

