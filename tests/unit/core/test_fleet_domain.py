"""The fleet's pure decisions: the gate, the eviction planner, prefix scores and the event buffer."""

from __future__ import annotations

import threading

from lmcache_core.fleet.buffer import EventBuffer
from lmcache_core.fleet.gate import plan_batches
from lmcache_core.fleet.model import (
    CapacityDecl,
    Cursor,
    EventBatch,
    EvictionCandidate,
    KeyRecord,
    Op,
    Placement,
    Tier,
    Verdict,
)
from lmcache_core.fleet.planner import choose, over_quota
from lmcache_core.fleet.scoring import prefix_scores
from lmcache_core.keys import ObjectKey


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(bytes([i]) * 16, "m", 0, 0, salt)


def b(inst: str, inc: int, seq: int) -> EventBatch:
    return EventBatch(inst, inc, seq, Tier.L1, "dram")


def test_the_gate_admits_each_position_once_and_fences_restarts() -> None:
    plans = plan_batches(
        [b("a", 1, 5), b("a", 1, 6), b("a", 1, 6), b("a", 0, 9), b("a", 2, 1), b("new", 3, 1)],
        {"a": Cursor(1, 4)},
    )
    assert [(p.verdict, p.fence_below) for p in plans] == [
        (None, None),
        (None, None),
        (Verdict.DUPLICATE, None),
        (Verdict.STALE, None),
        (None, 2),
        (None, None),
    ]


def test_cursor_gaps() -> None:
    assert Cursor(1, 4).advanced(1, 5) == Cursor(1, 5, False)
    assert Cursor(1, 4).advanced(1, 7) == Cursor(1, 7, True)
    assert Cursor(1, 7, True).advanced(1, 8).gap
    assert Cursor(1, 7, True).advanced(2, 1) == Cursor(2, 1, False)


def test_the_planner_trims_over_quota_salts_to_the_target() -> None:
    plans = over_quota(
        {"a": 1000, "b": 500, "c": 10, "free": 10**9},
        {"a": 800, "b": 1000, "c": 0},
        None,
        trigger_watermark=1.0,
        eviction_ratio=0.25,
    )
    assert [(p.cache_salt, p.to_free) for p in plans] == [("a", 400), ("c", 10)]
    assert [p.cache_salt for p in over_quota({"x": 90}, {}, 100, trigger_watermark=0.9, eviction_ratio=0.2)] == ["x"]
    assert over_quota({"x": 89}, {}, 100, trigger_watermark=0.9, eviction_ratio=0.2) == []


def test_choose_takes_the_coldest_until_enough_bytes() -> None:
    def cand(i: int, size: int) -> EvictionCandidate:
        return EvictionCandidate(key(i), float(i), KeyRecord((Placement("a", 1, Tier.L2, "fs", size),)))

    chosen = choose([cand(1, 100), cand(2, 100), cand(3, 100)], 150)
    assert [c.key for c in chosen] == [key(1), key(2)]
    assert choose([cand(1, 100)], 0) == []


def rec(*placements: Placement) -> KeyRecord:
    return KeyRecord(placements)


def test_prefix_scores_per_tier() -> None:
    l1 = lambda inst, inc=1: Placement(inst, inc, Tier.L1, "dram", 10)  # noqa: E731
    l2 = lambda inst: Placement(inst, 1, Tier.L2, "fs", 10)  # noqa: E731
    s3 = Placement("x", 1, Tier.L2, "s3", 10, shared=True)
    chunks = [
        [rec(l1("a"), l1("b"), s3)],
        [rec(l1("a"), l2("b"))],
        [rec(l2("a"), l1("b", inc=0))],  # b restarted: its old L1 is gone
        [rec(s3)],
    ]
    scores = prefix_scores(chunks, ["a", "b", "c"], {"s3": {"a", "c"}}, chunk_size=256, l2_weight=0.5, incarnations={"b": 1})
    by = {s.instance_id: s for s in scores}
    assert (by["a"].l1_tokens, by["a"].l2_tokens, by["a"].prefix_tokens) == (512, 256, 1024)
    assert by["a"].score == 512 + 0.5 * 512
    assert (by["b"].l1_tokens, by["b"].l2_tokens, by["b"].prefix_tokens) == (256, 0, 512)
    assert (by["c"].l1_tokens, by["c"].l2_tokens, by["c"].prefix_tokens) == (0, 256, 256)
    assert [s.instance_id for s in scores] == ["a", "b", "c"]


def test_a_chunk_counts_only_when_every_rank_is_there() -> None:
    p = Placement("a", 1, Tier.L1, "dram", 1)
    scores = prefix_scores([[rec(p), rec(p)], [rec(p), None]], ["a"], {}, chunk_size=16, l2_weight=0.5)
    assert scores[0].l1_tokens == 16


def test_the_buffer_numbers_runs_keeps_failed_batches_and_counts_drops() -> None:
    buf = EventBuffer("srv", 42, max_entries=5, max_batch_entries=2)
    buf.store(Tier.L1, "dram", [key(1), key(2), key(3)], [1, 2, 3])
    buf.access(Tier.L1, [key(1)])
    buf.delete(Tier.L2, "s3", [key(4), key(5)], shared=True)
    assert buf.stats()["dropped_events"] == 1 and buf.pending_entries == 5
    buf.declare([CapacityDecl(Tier.L1, "dram", False, 100, 0)])
    first = buf.take(10.0)
    assert [(x.seq, x.capacity is not None, len(x.entries)) for x in first] == [(1, True, 0), (2, False, 2), (3, False, 1), (4, False, 1), (5, False, 1)]
    assert first[1].entries[0].op is Op.STORE and first[4].shared and first[4].backend == "s3"
    buf.failed(first[1:3])
    buf.sent([first[0], *first[3:]])
    again = buf.take(11.0)
    assert [x.seq for x in again] == [2, 3]
    buf.sent(again)
    assert buf.pending_entries == 0 and buf.stats()["sent_batches"] == 5


def test_the_buffer_is_thread_safe() -> None:
    buf = EventBuffer("srv", 1, max_entries=10_000)

    def produce(n: int) -> None:
        for i in range(500):
            buf.store(Tier.L1, "dram", [key((n * 500 + i) % 256)], [1])

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches = buf.take(0.0, max_batches=10_000)
    assert sum(len(x.entries) for x in batches) == 2000
    assert [x.seq for x in batches] == list(range(1, len(batches) + 1))
