"""The FleetStore contract suite: what every fleet store must do, as a pytest base class.

A store's test module subclasses `FleetStoreContract` and provides the fixture `store` (a fresh,
empty store, closed afterwards) and `peer` (a second handle on the SAME state, as a second
coordinator would have: the store itself for an in-process store, a second client for a shared
one). Every test runs in well under a second and needs no sleeps."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from lmcache_core.fleet.model import (
    UNKNOWN_SIZE,
    CapacityDecl,
    Entry,
    EventBatch,
    InstanceInfo,
    Op,
    OwnerSlot,
    Tier,
    Verdict,
)
from lmcache_core.fleet.ports import FleetStore
from lmcache_core.fleet.wire import legacy_batch
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.testing import poll_until

NOW = 1_800_000_000.0


def make_key(i: int, *, model: str = "org/model", salt: str = "", rank: int = 0, group: int = 0, ws: int = 1) -> ObjectKey:
    """A deterministic key; distinct `i` give distinct chunk hashes (spread over buckets)."""
    return ObjectKey((i % 251).to_bytes(1, "big") + i.to_bytes(8, "big") * 3 + b"\x07" * 7, model, kv_rank_for(ws, rank), group, salt)


def batch(
    inst: str,
    inc: int,
    seq: int,
    entries: Sequence[tuple[Op, ObjectKey, int]] | Sequence[tuple[Op, ObjectKey]],
    *,
    tier: Tier = Tier.L2,
    backend: str = "fs",
    shared: bool = False,
) -> EventBatch:
    parsed = tuple(Entry(e[0], e[1], e[2] if len(e) > 2 else 0) for e in entries)  # type: ignore[misc]
    return EventBatch(inst, inc, seq, tier, backend, shared, parsed)


def stores(keys: Sequence[ObjectKey], size: int = 100) -> list[tuple[Op, ObjectKey, int]]:
    return [(Op.STORE, k, size) for k in keys]


def info(inst: str, port: int = 8080) -> InstanceInfo:
    return InstanceInfo(inst, "127.0.0.1", port, {"role": "test"}, "", 0, NOW)


class FleetStoreContract:
    """Base class of every FleetStore's contract tests (see the module docstring)."""

    def apply(self, store: FleetStore, *batches: EventBatch, now: float = NOW) -> list[Verdict]:
        return store.apply(batches, now)

    # ------------------------------------------------------------------ membership

    def test_register_heartbeat_deregister(self, store: FleetStore) -> None:
        assert store.register(info("a"), NOW + 30)[0] is False
        existed, epoch2 = store.register(info("a", 9000), NOW + 30)
        assert existed is True
        assert store.register(info("b"), NOW + 30)[1] > epoch2
        assert [r.info.instance_id for r in store.instances()] == ["a", "b"]
        record = store.instance("a")
        assert record is not None and record.info.http_port == 9000 and record.info.metadata == {"role": "test"}
        assert store.heartbeat("a", NOW + 60) and not store.heartbeat("nope", NOW + 60)
        assert store.deregister("a") and not store.deregister("a")
        assert store.instance("a") is None

    def test_an_expired_lease_is_claimed_by_exactly_one_coordinator(self, store: FleetStore, peer: FleetStore) -> None:
        store.register(info("old"), NOW + 1)
        store.register(info("live"), NOW + 100)
        got: list[list[str]] = []
        threads = [threading.Thread(target=lambda s=s: got.append(s.claim_expired(NOW + 10))) for s in (store, peer, store, peer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert sorted(i for ids in got for i in ids) == ["old"]
        assert [r.info.instance_id for r in store.instances()] == ["live"]

    def test_a_heartbeat_extends_the_lease(self, store: FleetStore) -> None:
        store.register(info("a"), NOW + 1)
        store.heartbeat("a", NOW + 50)
        assert store.claim_expired(NOW + 10) == []
        assert store.claim_expired(NOW + 60) == ["a"]

    # ------------------------------------------------------------------ events and the directory

    def test_stores_are_placed_counted_and_looked_up(self, store: FleetStore) -> None:
        keys = [make_key(i, salt="t1") for i in range(4)]
        assert self.apply(store, batch("a", 1, 1, stores(keys, 100), tier=Tier.L1, backend="dram")) == [Verdict.APPLIED]
        assert self.apply(store, batch("a", 1, 2, stores(keys[:2], 300))) == [Verdict.APPLIED]
        recs = store.lookup([*keys, make_key(99)])
        assert recs[4] is None
        first = recs[0]
        assert first is not None
        assert sorted((p.tier, p.backend, p.size_bytes, p.instance_id, p.incarnation) for p in first.placements) == [
            (Tier.L1, "dram", 100, "a", 1),
            (Tier.L2, "fs", 300, "a", 1),
        ]
        usage = store.usage()
        assert usage.num_keys == 4
        assert usage.placements == {Tier.L1: 4, Tier.L2: 2}
        assert usage.salt_bytes[Tier.L1] == {"t1": 400} and usage.salt_bytes[Tier.L2] == {"t1": 600}
        assert usage.owner_bytes[OwnerSlot("a", Tier.L2, "fs")] == 600
        assert usage.l1_keys_by_instance == {"a": 4}

    def test_a_batch_applied_twice_changes_nothing(self, store: FleetStore) -> None:
        b = batch("a", 5, 1, stores([make_key(1), make_key(2)], 64))
        assert self.apply(store, b) == [Verdict.APPLIED]
        before = store.usage()
        assert self.apply(store, b, b) == [Verdict.DUPLICATE, Verdict.DUPLICATE]
        assert store.usage() == before
        assert self.apply(store, batch("a", 4, 9, stores([make_key(3)]))) == [Verdict.STALE]
        assert store.lookup([make_key(3)]) == [None]
        counters = store.counters()
        assert counters["batches_applied"] == 1 and counters["batches_duplicate"] == 2 and counters["batches_stale"] == 1
        assert counters["events_applied:a"] == 2

    def test_concurrent_coordinators_apply_a_batch_once(self, store: FleetStore, peer: FleetStore) -> None:
        keys = [make_key(i, salt=f"s{i % 3}") for i in range(60)]
        b = batch("a", 1, 1, stores(keys, 10), tier=Tier.L1, backend="dram")
        verdicts: list[Verdict] = []
        barrier = threading.Barrier(4)

        def go(s: FleetStore) -> None:
            barrier.wait(5)
            verdicts.extend(s.apply([b], NOW))

        threads = [threading.Thread(target=go, args=(s,)) for s in (store, peer, store, peer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(verdicts) == sorted([Verdict.APPLIED] + [Verdict.DUPLICATE] * 3)
        usage = store.usage()
        assert usage.placement_bytes[Tier.L1] == 600 and usage.placements[Tier.L1] == 60

    def test_a_new_incarnation_drops_the_old_l1_placements_only(self, store: FleetStore) -> None:
        old = [make_key(i) for i in range(5)]
        self.apply(store, batch("a", 1, 1, stores(old), tier=Tier.L1, backend="dram"), batch("a", 1, 2, stores(old[:2])))
        self.apply(store, batch("b", 1, 1, stores(old[:1]), tier=Tier.L1, backend="dram"))
        restarted = batch("a", 2, 1, stores([make_key(50)]), tier=Tier.L1, backend="dram")
        store.apply([restarted], NOW)
        recs = store.lookup([*old, make_key(50)])
        assert [sorted((p.instance_id, p.tier.value) for p in r.placements) if r else None for r in recs] == [
            [("a", "l2"), ("b", "l1")],
            [("a", "l2")],
            None,
            None,
            None,
            [("a", "l1")],
        ]
        assert store.usage().l1_keys_by_instance == {"a": 1, "b": 1}

    def test_deletes_and_accesses(self, store: FleetStore) -> None:
        k1, k2 = make_key(1), make_key(2)
        self.apply(store, batch("a", 1, 1, stores([k1, k2], 10)), batch("a", 1, 2, [(Op.ACCESS, k1), (Op.ACCESS, k1)], backend=""))
        rec = store.lookup([k1])[0]
        assert rec is not None and rec.access_count == 2
        self.apply(store, batch("a", 1, 3, [(Op.DELETE, k1), (Op.DELETE, make_key(77))]))
        assert store.lookup([k1, k2])[0] is None
        usage = store.usage()
        assert usage.num_keys == 1 and usage.salt_bytes[Tier.L2] == {"": 10}

    def test_a_shared_pool_counts_a_key_once(self, store: FleetStore) -> None:
        k = make_key(1, salt="x")
        self.apply(store, batch("a", 1, 1, stores([k], 500), backend="s3", shared=True))
        self.apply(store, batch("b", 1, 1, stores([k], 500), backend="s3", shared=True))
        rec = store.lookup([k])[0]
        assert rec is not None and len(rec.placements) == 1 and rec.placements[0].owner == ""
        assert store.usage().salt_bytes[Tier.L2] == {"x": 500}
        self.apply(store, batch("a", 1, 2, [(Op.DELETE, k)], backend="s3", shared=True))
        assert store.lookup([k]) == [None]
        assert store.usage().salt_bytes[Tier.L2] == {}

    def test_a_departed_instance_is_fenced_and_may_start_over(self, store: FleetStore) -> None:
        keys = [make_key(i) for i in range(3)]
        self.apply(store, batch("a", 7, 40, stores(keys), tier=Tier.L1, backend="dram"), batch("a", 7, 41, stores(keys)))
        assert store.fence("a") == 3
        assert all(r is not None and [p.tier for p in r.placements] == [Tier.L2] for r in store.lookup(keys))
        assert store.cursors(["a"]) == {}
        assert self.apply(store, batch("a", 7, 1, stores(keys[:1]), tier=Tier.L1, backend="dram")) == [Verdict.APPLIED]

    def test_cursor_tracks_gaps(self, store: FleetStore) -> None:
        self.apply(store, batch("a", 1, 1, []), batch("a", 1, 2, []))
        assert store.cursors(["a", "zz"])["a"].gap is False
        self.apply(store, batch("a", 1, 5, []))
        cursor = store.cursors(["a"])["a"]
        assert (cursor.incarnation, cursor.seq, cursor.gap) == (1, 5, True)

    def test_legacy_batches_track_no_gaps(self, store: FleetStore) -> None:
        self.apply(store, legacy_batch("old", 3, 9, [Entry(Op.STORE, make_key(1), 10)]))
        cursor = store.cursors(["old"])["old"]
        assert (cursor.incarnation, cursor.seq, cursor.gap) == (3, 9, False)

    def test_capacity_declarations(self, store: FleetStore) -> None:
        def declare(seq: int, tier: Tier, backend: str, cap: int, rev: int, shared: bool = False) -> None:
            decl = CapacityDecl(tier, backend, shared, cap, rev)
            store.apply([EventBatch("a", 1, seq, tier, backend, shared, capacity=decl)], NOW)

        declare(1, Tier.L1, "dram", 100, 1)
        declare(2, Tier.L2, "fs", 900, 1, shared=True)
        assert {(d.backend, d.capacity_bytes, d.shared) for d in store.capacities()["a"]} == {("dram", 100, False), ("fs", 900, True)}
        declare(3, Tier.L1, "dram", 200, 2)
        assert {(d.backend, d.capacity_bytes) for d in store.capacities()["a"]} == {("dram", 200)}
        store.fence("a")
        assert "a" not in store.capacities()

    def test_resync_is_an_upsert(self, store: FleetStore) -> None:
        entries = [(make_key(i, salt="r"), 40) for i in range(5)]
        assert store.resync("a", "fs", False, entries, NOW) == 5
        store.resync("a", "fs", False, entries, NOW)
        usage = store.usage()
        assert usage.num_keys == 5 and usage.salt_bytes[Tier.L2] == {"r": 200}
        self.apply(store, batch("a", 1, 1, [(Op.DELETE, entries[0][0])]))
        assert store.usage().salt_bytes[Tier.L2] == {"r": 160}

    def test_a_resync_of_unknown_size_keeps_the_size_a_store_reported(self, store: FleetStore) -> None:
        # Server a stored into the shared pool (knows the size); server b lists the same pool
        # without knowing the objects' sizes: the listing must not zero what a's store reported.
        known, fresh = make_key(1, salt="s"), make_key(2, salt="s")
        self.apply(store, batch("a", 1, 1, [(Op.STORE, known, 4096)], shared=True, backend="s3"))
        assert store.resync("b", "s3", True, [(known, UNKNOWN_SIZE), (fresh, UNKNOWN_SIZE)], NOW) == 2
        sizes = {k: [p.size_bytes for p in r.placements] for k, r in zip((known, fresh), store.lookup([known, fresh]),
                                                                          strict=True) if r is not None}
        assert sizes == {known: [4096], fresh: [0]}
        assert store.usage().salt_bytes[Tier.L2] == {"s": 4096}
        store.resync("b", "s3", True, [(fresh, 512)], NOW)  # a listing that knows the size sets it
        assert store.usage().salt_bytes[Tier.L2] == {"s": 4096 + 512}

    def test_a_placement_of_zero_bytes_can_be_replaced_and_deleted(self, store: FleetStore) -> None:
        key = make_key(3, salt="z")
        assert store.resync("b", "s3", True, [(key, UNKNOWN_SIZE)], NOW) == 1  # 0 bytes: size unknown
        self.apply(store, batch("b", 1, 1, [(Op.DELETE, key)], shared=True, backend="s3"))
        assert store.lookup([key]) == [None]
        store.resync("b", "s3", True, [(key, UNKNOWN_SIZE)], NOW)
        self.apply(store, batch("a", 1, 1, [(Op.STORE, key, 64)], shared=True, backend="s3"))
        assert store.usage().salt_bytes[Tier.L2] == {"z": 64}

    def test_list_keys_filters_and_pages(self, store: FleetStore) -> None:
        keys = [make_key(i, model=f"m{i % 2}") for i in range(10)]
        self.apply(store, batch("a", 1, 1, stores(keys), tier=Tier.L1, backend="dram"), batch("b", 1, 1, stores(keys[:4])))
        total, page = store.list_keys(None, "", "", 0, 100)
        assert total == 10 and len(page) == 10
        total, page = store.list_keys(Tier.L2, "", "", 0, 100)
        assert total == 4 and all(p.tier == Tier.L2 for _, r in page for p in r.placements)
        total, page = store.list_keys(None, "b", "", 1, 2)
        assert total == 4 and len(page) == 2
        assert store.list_keys(None, "", "nope", 0, 10) == (0, [])
        seen = {k for k, _ in store.list_keys(None, "", "", 0, 5)[1]} | {k for k, _ in store.list_keys(None, "", "", 5, 5)[1]}
        assert seen == set(keys)

    # ------------------------------------------------------------------ quotas, pins, eviction

    def test_quotas_and_the_default_limit(self, store: FleetStore, peer: FleetStore) -> None:
        store.set_quota("alice", 1000)
        store.set_quota("", 5)
        assert peer.quotas() == {"alice": 1000, "": 5}
        assert store.delete_quota("alice") and not store.delete_quota("alice")
        assert store.default_limit() is None
        store.set_default_limit(77)
        assert peer.default_limit() == 77
        store.set_default_limit(None)
        assert store.default_limit() is None

    def test_pins_count_and_cover_every_object_group(self, store: FleetStore) -> None:
        k, k_group = make_key(1, salt="p"), make_key(1, salt="p", group=3)
        store.pin([k, k], +1)
        store.pin([k_group], -1)
        assert store.pinned([k, k_group, make_key(2)]) == [1, 1, 0]
        store.pin([make_key(2, salt="q")], +1)
        total, page = store.list_pins("p", None, 0, 10)
        assert total == 1 and page == [(k, 1)]
        assert store.list_pins(None, None, 0, 10)[0] == 2
        store.drop_pins([k_group])
        assert store.pinned([k]) == [0]

    def test_coldest_keys_come_first_without_pinned_or_in_flight_ones(self, store: FleetStore) -> None:
        keys = [make_key(i, salt="hot") for i in range(6)]
        for i, key in enumerate(keys):
            self.apply(store, batch("a", 1, i + 1, stores([key], 10)), now=NOW + i)
        self.apply(store, batch("a", 1, 20, [(Op.ACCESS, keys[0])], backend=""), now=NOW + 100)
        self.apply(store, batch("a", 1, 21, stores([make_key(90, salt="other")], 10)), now=NOW - 50)
        store.pin([keys[1]], +1)
        cold, in_flight = store.coldest("hot", 3, NOW + 200, 30.0)
        assert [c.key for c in cold] == [keys[2], keys[3], keys[4]] and in_flight == 0
        assert cold[0].record.l2_bytes() == 10
        store.mark_evicting([keys[2], keys[3]], NOW + 200)
        cold, in_flight = store.coldest("hot", 3, NOW + 210, 30.0)
        assert [c.key for c in cold] == [keys[4], keys[5], keys[0]] and in_flight == 20
        assert store.coldest("other", 3, NOW + 210, 30.0)[1] == 0
        cold, in_flight = store.coldest("hot", 2, NOW + 240, 30.0)
        assert [c.key for c in cold] == [keys[2], keys[3]] and in_flight == 0
        self.apply(store, batch("a", 1, 22, [(Op.DELETE, keys[2])]))
        assert keys[2] not in [c.key for c in store.coldest("hot", 10, NOW + 300, 30.0)[0]]

    def test_l1_only_keys_are_not_eviction_candidates(self, store: FleetStore) -> None:
        self.apply(store, batch("a", 1, 1, stores([make_key(1)]), tier=Tier.L1, backend="dram"))
        assert store.coldest("", 10, NOW, 1.0) == ([], 0)

    def test_one_leader_at_a_time(self, store: FleetStore, peer: FleetStore) -> None:
        assert store.try_lead("evict", "c1", 30)
        assert not peer.try_lead("evict", "c2", 30)
        assert store.try_lead("evict", "c1", 30)
        peer.resign("evict", "c2")
        assert not peer.try_lead("evict", "c2", 30)
        store.resign("evict", "c1")
        assert peer.try_lead("evict", "c2", 0.05)
        poll_until(lambda: store.try_lead("evict", "c1", 30), timeout=5, interval=0.01, what="the 50 ms lease to expire")

    def test_flags_and_mounts(self, store: FleetStore, peer: FleetStore) -> None:
        assert store.get_flag("resync") is None
        store.set_flag("resync", "done")
        assert peer.get_flag("resync") == "done"
        store.set_flag("resync", None)
        assert peer.get_flag("resync") is None
        store.note_shared_mount("s3", "a")
        store.note_shared_mount("s3", "b")
        assert peer.shared_mounts("s3") == {"a", "b"} and peer.shared_mounts("x") == set()
        assert store.ping()
        assert store.describe()["kind"]

    def test_many_tenants_and_models(self, store: FleetStore) -> None:
        keys = [make_key(i, model=f"m{i % 3}", salt=f"t{i % 5}") for i in range(300)]
        self.apply(store, batch("a", 1, 1, stores(keys, 7)))
        usage = store.usage()
        assert usage.num_keys == 300 and sum(usage.salt_bytes[Tier.L2].values()) == 2100
        assert usage.salt_bytes[Tier.L2]["t0"] == 60 * 7
        assert all(r is not None for r in store.lookup(keys))
        assert len(store.coldest("t1", 1000, NOW, 1.0)[0]) == 60
