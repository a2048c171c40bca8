"""The standard L2 stack beyond the contract: the atomic skip-locked delete, one metric label
scheme, circuit breaking for any backend, declared capabilities, bare backends from factories."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lmcache_adapters.l2.mock import MockBackend
from lmcache_adapters.l2.serde import SerdeL2Adapter, ZlibCodec
from lmcache_adapters.l2.stack import BackendL2Adapter, BreakerSettings, as_l2_adapter
from lmcache_adapters.testing import make_key, tensor_payload
from lmcache_core.clock import ManualClock
from lmcache_core.errors import BackendUnreachableError, ConfigError, CorruptObjectError
from lmcache_core.keys import ObjectKey
from lmcache_core.ports import KnowsStoredSizes, L2Adapter, ProbesBackend, capability_of
from lmcache_core.testing import poll_until

WAIT = 5.0


class Recording:
    """A MetricsSink that keeps every increment with its labels."""

    def __init__(self) -> None:
        self.incs: list[tuple[str, dict[str, str]]] = []

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.incs.append((name, labels))

    def set(self, name: str, value: float, **labels: str) -> None:
        return None

    def observe(self, name: str, value: float, **labels: str) -> None:
        return None


class GatedDeleteBackend(MockBackend):
    """Deletes wait for the test's gate: a slow network delete, made observable."""

    def __init__(self) -> None:
        super().__init__()
        self.deleting = threading.Event()
        self.gate = threading.Event()

    def delete(self, key: ObjectKey) -> bool:
        self.deleting.set()
        assert self.gate.wait(WAIT)
        return super().delete(key)


class FlakyBackend(MockBackend):
    """Unreachable while `down` is set; its probe says so too."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0

    def put(self, key: ObjectKey, payload: memoryview) -> bool:
        self.calls += 1
        if self.down:
            raise BackendUnreachableError("connection refused")
        return super().put(key, payload)

    def exists(self, key: ObjectKey) -> bool:
        self.calls += 1
        if self.down:
            raise BackendUnreachableError("connection refused")
        return super().exists(key)

    def probe(self) -> None:
        if self.down:
            raise BackendUnreachableError("connection refused")


class CorruptingBackend(MockBackend):
    def get_into(self, key: ObjectKey, buffer: memoryview) -> bool:
        self.delete(key)
        raise CorruptObjectError("checksum mismatch")


@pytest.fixture
def gated() -> Iterator[tuple[BackendL2Adapter, GatedDeleteBackend]]:
    backend = GatedDeleteBackend()
    adapter = BackendL2Adapter(backend, max_workers=2)
    yield adapter, backend
    backend.gate.set()
    adapter.close()


def test_a_lookup_during_a_delete_waits_and_misses(gated: tuple[BackendL2Adapter, GatedDeleteBackend]) -> None:
    adapter, backend = gated
    key = make_key(1)
    assert adapter.submit_store([key], [tensor_payload(seed=1)]).result(WAIT) == [True]
    outcome: list[list[bool]] = []
    deleter = threading.Thread(target=lambda: outcome.append(adapter.delete([key])))
    deleter.start()
    assert backend.deleting.wait(WAIT)  # the key was checked unlocked; its removal is under way
    lookup = adapter.submit_lookup_and_lock([key])
    assert not lookup.done(), "a lookup must not lock a key whose removal is in flight"
    backend.gate.set()
    deleter.join(WAIT)
    assert outcome == [[True]]
    assert lookup.result(WAIT) == [False], "the lookup saw the delete through, not a doomed hit"
    assert adapter.report_status()["locked_key_count"] == 0


def test_a_locked_key_is_never_handed_to_the_backend_for_deletion() -> None:
    backend = GatedDeleteBackend()
    backend.gate.set()
    adapter = BackendL2Adapter(backend)
    try:
        key = make_key(2)
        adapter.submit_store([key], [tensor_payload(seed=2)]).result(WAIT)
        assert adapter.submit_lookup_and_lock([key]).result(WAIT) == [True]
        assert adapter.delete([key, key]) == [False, False]
        assert not backend.deleting.is_set()
        adapter.unlock([key])
        assert adapter.delete([key, key]) == [True, False], "a key named twice is removed once"
    finally:
        adapter.close()


def test_metrics_carry_the_configured_name_and_the_kind() -> None:
    metrics = Recording()
    adapter = BackendL2Adapter(CorruptingBackend(), name="hot-tier", metrics=metrics)
    try:
        key = make_key(3)
        adapter.submit_store([key], [tensor_payload(seed=3)]).result(WAIT)
        buffer = memoryview(bytearray(tensor_payload(seed=3).nbytes))
        assert adapter.submit_load([key], [buffer]).result(WAIT) == [False]
        assert metrics.incs == [("l2_checksum_failures", {"adapter": "hot-tier", "kind": "mock"})]
        assert adapter.submit_lookup_and_lock([key]).result(WAIT) == [False], "the corrupt object is gone"
    finally:
        adapter.close()


def test_any_backend_gets_a_circuit_breaker_that_fails_fast_and_recovers() -> None:
    clock, metrics = ManualClock(), Recording()
    backend = FlakyBackend()
    adapter = BackendL2Adapter(
        backend,
        name="flaky",
        clock=clock,
        metrics=metrics,
        circuit_breaker=BreakerSettings(threshold=2, backoff_seconds=5, max_backoff_seconds=20),
    )
    try:
        key = make_key(4)
        backend.down = True
        for _ in range(2):
            assert adapter.submit_store([key], [tensor_payload(seed=4)]).result(WAIT) == [False]
        status = adapter.report_status()
        assert status["circuit"] == "open" and status["is_healthy"] is False
        assert ("l2_circuit_opened", {"adapter": "flaky", "kind": "mock"}) in metrics.incs
        calls = backend.calls
        future = adapter.submit_lookup_and_lock([key])
        assert future.done() and future.result() == [False], "an open circuit answers at once"
        assert adapter.delete([key]) == [False]
        with pytest.raises(BackendUnreachableError):
            adapter.list_keys(10)
        assert backend.calls == calls, "no backend call while the circuit is open"
        backend.down = False
        clock.advance(5.5)
        adapter.report_status()  # schedules the probe
        # The probe runs on the adapter's pool.
        poll_until(lambda: adapter.report_status()["circuit"] == "closed", timeout=WAIT,
                   what="the circuit to close after a good probe")
        assert adapter.submit_store([key], [tensor_payload(seed=4)]).result(WAIT) == [True]
    finally:
        adapter.close()


def test_capabilities_are_declared_through_every_wrapper() -> None:
    backend = FlakyBackend()
    adapter = BackendL2Adapter(backend)
    serde = SerdeL2Adapter(adapter, ZlibCodec())
    try:
        assert capability_of(adapter, ProbesBackend) is backend
        assert capability_of(serde, ProbesBackend) is serde, "serde's probe forwards to the backend's"
        assert capability_of(BackendL2Adapter(MockBackend()), ProbesBackend) is None
        assert capability_of(serde, KnowsStoredSizes) is None, "inner sizes are of encoded blobs"
        assert serde.type_name == "FlakyBackend"
    finally:
        serde.close()


def test_a_factory_may_return_a_bare_backend_or_a_full_adapter() -> None:
    wrapped = as_l2_adapter(MockBackend(), name="from-factory")
    try:
        assert isinstance(wrapped, L2Adapter) and wrapped.report_status()["name"] == "from-factory"
        assert as_l2_adapter(wrapped, name="ignored") is wrapped
    finally:
        wrapped.close()
    thing: Any = object()
    with pytest.raises(ConfigError, match="neither an L2Adapter nor a StorageBackend"):
        as_l2_adapter(thing, name="x")
