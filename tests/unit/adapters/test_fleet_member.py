"""FleetMember: a real storage stack (L1 + a shared mock L2) reporting over real HTTP to our
coordinator app: registration with the advertise address, L1 and L2 events applied, capacity
declared, deregistration taking the L1 placements; a down coordinator costing counted drops and
never the data path; the shutdown's final L1 clear not reported."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lmcache_adapters.fleet.member import FleetMember, advertise_address
from lmcache_adapters.l2.mock import MockL2Adapter
from lmcache_core.clock import ManualClock
from lmcache_core.eviction import make_policy
from lmcache_core.fleet.model import Tier
from lmcache_core.fleet.service import FleetService
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult
from lmcache_core.plugin import Endpoint
from lmcache_core.ports import L2Usage
from lmcache_core.quota import QuotaManager
from lmcache_core.storage_manager import StorageManager
from lmcache_core.testing import poll_until
from lmcache_core.testing.memory import BytearrayMemoryPool

OBJ = 4096


def key(i: int) -> ObjectKey:
    return ObjectKey(i.to_bytes(32, "big"), "m", kv_rank_for(1, 0))



def put(l1: L1Manager, keys: list[ObjectKey]) -> None:
    assert all(r is OpResult.SUCCESS for r, _ in l1.reserve_write(keys, [OBJ] * len(keys)))
    assert all(r is OpResult.SUCCESS for r in l1.finish_write(keys))


@pytest.fixture
def storage() -> Iterator[StorageManager]:
    quotas = QuotaManager()
    clock = ManualClock()
    sm = StorageManager(
        L1Manager(BytearrayMemoryPool(64 * OBJ), clock=clock),
        policy=make_policy("LRU", quotas),
        quotas=quotas,
        l2_adapters=[("bucket", MockL2Adapter(capacity_bytes=1 << 20), None, True)],
        clock=clock,
        eviction_interval_seconds=3600,
    )
    sm.start()
    yield sm
    sm.close(drain_timeout=2)



def member_for(url: str, **kw: Any) -> FleetMember:
    return FleetMember(url, heartbeat_interval=0.05, flush_interval=0.02, timeout_s=1.0, **kw)


def test_a_member_registers_reports_and_leaves(storage: StorageManager, coordinator: tuple[str, FleetService]) -> None:
    url, service = coordinator
    member = member_for(url, incarnation=5)
    member.attach(storage)
    put(storage.l1, [key(1), key(2)])  # buffered before the ports are known
    assert member.report_status()["started"] is False and member.report_status()["buffered_events"] >= 2
    member.start(http_port=8123, endpoints={"zmq": Endpoint("tcp://127.0.0.1:5599", 5599), "zmq-ipc": Endpoint(None)})
    try:
        info = poll_until(lambda: service.store.instance("127.0.0.1:8123")).info
        assert (info.ip, info.http_port) == ("127.0.0.1", 8123)
        assert info.metadata["zmq_port"] == "5599" and info.metadata["incarnation"] == "5"
        assert "zmq_ipc_port" not in info.metadata  # an endpoint without a TCP port registers none
        assert storage.store.drain(5)
        poll_until(lambda: service.usage().placements[Tier.L1] == 2 and service.usage().placements[Tier.L2] == 2)
        record = service.lookup([key(1)])[0]
        assert record is not None
        assert {(p.tier, p.backend, p.shared, p.size_bytes) for p in record.placements} == {
            (Tier.L1, "dram", False, OBJ), (Tier.L2, "mock", True, OBJ)
        }
        declared = {(d.tier, d.backend): d for d in service.store.capacities()["127.0.0.1:8123"]}
        assert declared[(Tier.L1, "dram")].capacity_bytes == 64 * OBJ
        assert declared[(Tier.L2, "mock")].capacity_bytes == 1 << 20 and declared[(Tier.L2, "mock")].shared
        # A compartment resized at run time (a Device-DAX device added, say) is declared again
        # with the next heartbeat.
        adapter = storage.find_adapter(None).adapter
        grown = L2Usage(used_bytes=adapter.usage().used_bytes, capacity_bytes=2 << 20)
        adapter.usage = lambda: grown  # type: ignore[method-assign]
        poll_until(lambda: {(d.tier, d.capacity_bytes) for d in service.store.capacities()["127.0.0.1:8123"]}
                   == {(Tier.L1, 64 * OBJ), (Tier.L2, 2 << 20)}, what="the new L2 capacity declared")
        # Deletes from either tier follow.
        storage.l1.delete([key(2)])
        storage.delete_from_l2(storage.find_adapter(None), [key(2)])
        poll_until(lambda: service.lookup([key(2)])[0] is None)
        status = member.report_status()
        assert status["registered"] and status["dropped_events"] == 0 and status["instance_id"] == "127.0.0.1:8123"
    finally:
        member.close_l1()
        storage.l1.clear(force=True)  # the shutdown's clear: not reported
        member.stop()
    assert service.store.instance("127.0.0.1:8123") is None
    assert service.usage().placements[Tier.L1] == 0  # deregistering took the L1 placements
    assert service.usage().placements[Tier.L2] == 1  # the shared L2 object outlives the member
    assert member.events.pending_entries == 0


def test_a_down_coordinator_never_touches_the_data_path(storage: StorageManager) -> None:
    member = member_for("http://127.0.0.1:9", max_buffered_events=5, instance_id="lonely")
    member.attach(storage)
    member.start(http_port=8124)
    keys = [key(i) for i in range(10)]
    put(storage.l1, keys)  # 10 L1 stores into a buffer of 5
    assert storage.l1.object_count() == 10
    status = poll_until(lambda: (s := member.report_status())["failed_calls"] and s)
    assert status["registered"] is False and status["dropped_events"] >= 5 and status["is_healthy"]
    assert status["buffered_events"] == 5
    # The reporting thread must end, not merely outlast stop()'s 5 s join: checked on the thread
    # itself (a wall-clock bound equal to that join timeout could not tell the two apart).
    assert member.client is not None
    reporter = member.client._thread
    member.stop()
    assert reporter is not None and not reporter.is_alive()


def test_reporting_off_registers_without_events(storage: StorageManager, coordinator: tuple[str, FleetService]) -> None:
    url, service = coordinator
    member = member_for(url, report_events=False, instance_id="quiet")
    member.attach(storage)
    member.start(http_port=8125)
    try:
        put(storage.l1, [key(1)])
        poll_until(lambda: service.store.instance("quiet"))
        assert member.events.stats()["accepted_events"] == 0
    finally:
        member.stop()


def test_the_advertise_address_is_the_bound_host_or_the_route_to_the_coordinator() -> None:
    assert advertise_address("10.1.2.3", "http://coord:9300") == "10.1.2.3"
    assert advertise_address("0.0.0.0", "http://127.0.0.1:9300") == "127.0.0.1"
