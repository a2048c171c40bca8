"""FleetService over the in-memory store, a manual clock and recorded server calls."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from fleet_helpers import RecordedServers
from lmcache_adapters.fleet.memory import MemoryFleetStore
from lmcache_core.clock import ManualClock
from lmcache_core.fleet.model import Entry, EventBatch, InstanceInfo, KeyPage, Op, Tier
from lmcache_core.fleet.service import FleetService, FleetSettings
from lmcache_core.fleet.wire import TokenQuery, token_array
from lmcache_core.keys import ObjectKey


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(i.to_bytes(4, "big") * 8, "m", 0, 0, salt)


def info(inst: str) -> InstanceInfo:
    return InstanceInfo(inst, "127.0.0.1", 9000)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(wall_start=1_800_000_000.0)


@pytest.fixture
def servers() -> RecordedServers:
    return RecordedServers()


@pytest.fixture
def svc(clock: ManualClock, servers: RecordedServers) -> FleetService:
    settings = FleetSettings(lease_ttl=30, eviction_ratio=0.5, resync_delay=5, eviction_retry_seconds=20, chunk_size=4)
    return FleetService(MemoryFleetStore(), servers, settings, clock=clock)


def stores(inst: str, inc: int, seq: int, keys: Sequence[ObjectKey], *, tier: Tier = Tier.L2, backend: str = "fs", shared: bool = False, size: int = 100) -> EventBatch:
    return EventBatch(inst, inc, seq, tier, backend, shared, tuple(Entry(Op.STORE, k, size) for k in keys))


def test_leases_expire_and_take_l1_placements_with_them(svc: FleetService, clock: ManualClock) -> None:
    svc.register(info("a"))
    svc.register(info("b"))
    svc.ingest([stores("a", 1, 1, [key(1)], tier=Tier.L1, backend="dram"), stores("a", 1, 2, [key(1)])])
    clock.advance(20)
    assert svc.heartbeat("b")
    clock.advance(15)
    assert svc.sweep_leases() == ["a"]
    assert svc.sweep_leases() == []
    record = svc.lookup([key(1)])[0]
    assert record is not None and [p.tier for p in record.placements] == [Tier.L2]
    assert set(svc.live_instances(fresh=True)) == {"b"}
    assert not svc.heartbeat("a")


def test_a_restarted_050_server_is_not_taken_for_a_replay(svc: FleetService) -> None:
    svc.register(info("old"))
    assert svc.ingest_legacy("old", 1, [Entry(Op.STORE, key(1), 10)]) == 1
    svc.ingest_legacy("old", 1, [Entry(Op.STORE, key(2), 10)])  # a replay: dropped
    assert svc.lookup([key(2)]) == [None]
    svc.register(info("old"))  # restarted: registers again, counts from 1
    svc.ingest_legacy("old", 1, [Entry(Op.STORE, key(3), 10)])
    assert svc.lookup([key(3)])[0] is not None
    assert svc.store.counters()["batches_duplicate"] == 1


def test_eviction_deletes_the_coldest_keys_through_the_right_servers(svc: FleetService, servers: RecordedServers, clock: ManualClock) -> None:
    for inst in ("a", "b", "c"):
        svc.register(info(inst))
    private = [key(i, "t") for i in range(4)]
    shared = [key(10 + i, "t") for i in range(4)]
    for i, k in enumerate(private):
        clock.advance(1)
        svc.ingest([stores("a", 1, i + 1, [k])])
    for i, k in enumerate(shared):
        clock.advance(1)
        svc.ingest([stores("b", 1, i + 1, [k], backend="s3", shared=True)])
    svc.store.set_quota("t", 400)  # usage 800: trim to 200
    report = svc.eviction_cycle()
    assert report.leader and report.salts[0]["to_free_bytes"] == 600 and report.keys_sent == 6
    sent = {inst: keys for inst, keys in servers.deletes}
    assert sent["a"] == private and sent["b"] == shared[:2]
    # Nothing came back yet: the keys are in flight, not sent again until the retry time.
    servers.deletes.clear()
    assert svc.eviction_cycle().keys_sent == 0
    clock.advance(25)
    assert svc.eviction_cycle().keys_sent == 6
    # The delete events arrive: usage falls under the quota, nothing more to do.
    svc.ingest([EventBatch("a", 1, 10, Tier.L2, "fs", False, tuple(Entry(Op.DELETE, k) for k in private))])
    svc.ingest([EventBatch("c", 1, 1, Tier.L2, "s3", True, tuple(Entry(Op.DELETE, k) for k in shared[:2]))])
    assert svc.usage().salt_bytes[Tier.L2] == {"t": 200}
    servers.deletes.clear()
    assert svc.eviction_cycle().salts == [] and servers.deletes == []


def test_pinned_keys_and_unreachable_owners(svc: FleetService, servers: RecordedServers) -> None:
    svc.register(info("a"))
    svc.ingest([stores("a", 1, 1, [key(1), key(2)]), stores("gone", 1, 1, [key(3)])])
    svc.store.pin([key(1)], +1)
    svc.store.set_default_limit(0)
    report = svc.eviction_cycle()
    assert report.unreachable_keys == 1
    assert servers.deletes == [("a", [key(2)])]


def test_a_failed_delete_is_counted(svc: FleetService, servers: RecordedServers) -> None:
    svc.register(info("a"))
    svc.ingest([stores("a", 1, 1, [key(1)])])
    svc.store.set_default_limit(0)
    servers.down.add("a")
    report = svc.eviction_cycle()
    assert (report.requests, report.failed_requests, report.keys_sent) == (1, 1, 0)


def test_only_one_coordinator_runs_the_loop(svc: FleetService, servers: RecordedServers, clock: ManualClock) -> None:
    other = FleetService(svc.store, servers, svc.settings, clock=clock)
    assert svc.eviction_cycle().leader
    assert not other.eviction_cycle().leader
    svc.resign()
    assert other.eviction_cycle().leader


def test_an_empty_store_is_resynced_once_from_every_server(svc: FleetService, servers: RecordedServers, clock: ManualClock) -> None:
    svc.register(info("a"))
    svc.register(info("b"))
    servers.pages["a"] = [
        KeyPage(((key(1), 100), (key(2), None)), "1", "fs", False),
        KeyPage(((key(3), 100),), None, "fs", False),
    ]
    servers.pages["b"] = [KeyPage(((key(7), 50),), None, "s3", True)]
    servers.down.add("b")
    assert svc.eviction_cycle().resync == {"state": "pending"}
    clock.advance(6)
    report = svc.eviction_cycle()
    assert report.resync == {"state": "done", "keys": 3, "sources": ["a"]}
    assert svc.usage().salt_bytes[Tier.L2] == {"": 200}
    assert svc.eviction_cycle().resync is None


def test_score_through_the_service(svc: FleetService) -> None:
    svc.register(info("a"))
    svc.register(info("b"))
    tokens = token_array(list(range(12)))
    query = TokenQuery("m", 1, "", token_ids=tokens)
    keys, chunks = svc.resolve(query)
    assert chunks == 3
    svc.ingest([stores("a", 1, 1, keys[:2], tier=Tier.L1, backend="dram"), stores("b", 1, 1, keys)])
    result = svc.score(query)
    assert [(s.instance_id, s.l1_tokens, s.l2_tokens, s.prefix_tokens) for s in result.scores] == [("a", 8, 0, 8), ("b", 0, 12, 12)]
    assert result.scores[0].score == 8.0 and result.scores[1].score == 6.0
    only_b = svc.score(query, instance_ids=["b", "zz"])
    assert [s.instance_id for s in only_b.scores] == ["b"]
