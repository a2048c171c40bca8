"""DataPath: LOOKUP jobs and lock counts, FREE_LOOKUP_LOCKS, END_SESSION, store reservations."""

from __future__ import annotations

import pytest

from lmcache_core.clock import ManualClock
from lmcache_core.errors import InvalidKeyError
from lmcache_core.hashing import TokenHasher
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult
from lmcache_core.lookup import DataPath, RequestKey
from lmcache_core.sessions import SessionManager
from lmcache_core.testing.memory import BytearrayMemoryPool

C = 4
OBJ = 4096


def make(capacity_objects: int = 64) -> tuple[DataPath, L1Manager, ManualClock]:
    clock = ManualClock()
    l1 = L1Manager(BytearrayMemoryPool(capacity_objects * OBJ), clock=clock)
    sessions = SessionManager(TokenHasher("blake3", chunk_size=C), clock=clock, ttl_seconds=60)
    dp = DataPath(l1, sessions, clock=clock, job_ttl_seconds=100)
    dp.register_layout("m", 1, OBJ)
    return dp, l1, clock


def key(tokens: list[int], rid: str, *, start: int = 0, end: int | None = None, worker: int | None = None,
        ws: int = 1) -> RequestKey:
    return RequestKey("m", ws, worker, tokens, start, len(tokens) // C * C if end is None else end, rid)


def store(dp: DataPath, tokens: list[int], end: int, ws: int = 1, rank: int = 0) -> None:
    k = key(tokens, "writer", end=end, worker=rank, ws=ws)
    keys = dp.keys_of(k, dp.range_hashes(k), rank)
    reserved = dp.reserve_new(keys, OBJ)
    assert dp.commit([keys[i] for i, _ in reserved])


TOKENS = list(range(1, 4 * C + 2))  # 4 full chunks + 1 token


def test_lookup_without_layout_reports_zero() -> None:
    dp, _, _ = make()
    dp.unregister_layout("m", 1)
    dp.lookup(key(TOKENS, "r"))
    assert dp.query("r") == (True, 0)


def test_lookup_counts_leading_hits_once_and_ignores_start_end() -> None:
    dp, l1, _ = make()
    store(dp, TOKENS, 2 * C)
    dp.lookup(key(TOKENS, "r", start=2 * C, end=3 * C))
    assert dp.lookup_hits("r") == 2
    assert dp.query("r") == (True, 2)
    assert dp.query("r") == (False, 0)  # consumed: returned once
    # the two hits are read-locked for the retrieve: eviction cannot take them
    k = key(TOKENS, "r", end=2 * C, worker=0)
    keys = dp.keys_of(k, dp.range_hashes(k), 0)
    assert l1.delete(keys) == [OpResult.KEY_IS_LOCKED] * 2


def test_only_the_leading_run_stays_locked() -> None:
    dp, l1, _ = make()
    store(dp, TOKENS, 3 * C)
    # drop chunk 1: chunk 2 is present but behind a hole
    k = key(TOKENS, "w", end=3 * C, worker=0)
    keys = dp.keys_of(k, dp.range_hashes(k), 0)
    assert l1.delete([keys[1]]) == [OpResult.SUCCESS]
    dp.lookup(key(TOKENS, "r"))
    assert dp.query("r") == (True, 1)
    assert l1.delete([keys[2]]) == [OpResult.SUCCESS]  # not left locked
    assert l1.delete([keys[0]]) == [OpResult.KEY_IS_LOCKED]


def test_retrieve_releases_lookup_lock_and_missing_key_fails() -> None:
    dp, l1, _ = make()
    store(dp, TOKENS, 2 * C)
    dp.lookup(key(TOKENS, "r"))
    k = key(TOKENS, "r", end=2 * C, worker=0)
    keys = dp.keys_of(k, dp.range_hashes(k), 0)
    ticket = dp.acquire_for_read(keys, request_id="r")
    assert ticket is not None and len(ticket.handles) == 2
    dp.release_read(ticket)
    assert l1.delete(keys) == [OpResult.SUCCESS] * 2
    assert dp.acquire_for_read(keys, request_id="r") is None


def test_mla_tp_readers_each_release_one_lock() -> None:
    dp, l1, _ = make()
    store(dp, TOKENS, C)
    dp.lookup(key(TOKENS, "r"), tp_size=2)  # tp 2 > world_size 1: one extra lock
    k = key(TOKENS, "r", end=C, worker=0)
    keys = dp.keys_of(k, dp.range_hashes(k), 0)
    first = dp.acquire_for_read(keys, request_id="r")
    assert first is not None
    dp.release_read(first)
    assert l1.delete(keys) == [OpResult.KEY_IS_LOCKED]  # the second TP rank has not read yet
    second = dp.acquire_for_read(keys, request_id="r")
    assert second is not None
    dp.release_read(second)
    assert l1.delete(keys) == [OpResult.SUCCESS]


def test_free_lookup_locks_releases_unused_locks() -> None:
    dp, l1, _ = make()
    store(dp, TOKENS, 2 * C)
    dp.lookup(key(TOKENS, "r"))
    assert dp.free_lookup_locks(key(TOKENS, "r", end=2 * C)) == 2
    k = key(TOKENS, "r", end=2 * C, worker=0)
    assert l1.delete(dp.keys_of(k, dp.range_hashes(k), 0)) == [OpResult.SUCCESS] * 2


def test_world_size_two_counts_a_chunk_only_when_every_rank_hits() -> None:
    dp, _, _ = make()
    dp.register_layout("m", 2, OBJ)
    store(dp, TOKENS, 2 * C, ws=2, rank=0)
    store(dp, TOKENS, 1 * C, ws=2, rank=1)
    dp.lookup(key(TOKENS, "r", ws=2))
    assert dp.query("r") == (True, 1)


def test_end_session_forgets_session_and_keeps_locks() -> None:
    dp, l1, _ = make()
    store(dp, TOKENS, C)
    dp.lookup(key(TOKENS, "r"))
    assert dp.end_session("r") is True
    assert dp.sessions.get("r") is None
    assert dp.end_session("r") is False
    k = key(TOKENS, "x", end=C, worker=0)
    assert l1.delete(dp.keys_of(k, dp.range_hashes(k), 0)) == [OpResult.KEY_IS_LOCKED]


def test_reap_removes_expired_sessions_and_stale_jobs() -> None:
    dp, _, clock = make()
    dp.lookup(key(TOKENS, "r"))
    clock.advance(101)
    assert dp.reap() == (1, 1)
    assert dp.active_job_count() == 0 and dp.sessions.active_count() == 0


def test_unaligned_range_is_rejected() -> None:
    dp, _, _ = make()
    with pytest.raises(InvalidKeyError):
        dp.range_hashes(key(TOKENS, "r", start=1, end=C))
    with pytest.raises(InvalidKeyError):
        dp.range_hashes(key(TOKENS, "r", end=8 * C))


def test_reserve_new_skips_existing_and_falls_back_to_a_prefix_when_full() -> None:
    dp, l1, _ = make(capacity_objects=3)
    long = list(range(1, 8 * C + 1))
    k = key(long, "w", worker=0)
    keys = dp.keys_of(k, dp.range_hashes(k), 0)
    # every object stays write-locked, so nothing can be evicted to make room
    reserved = dp.reserve_new(keys, OBJ)
    assert [i for i, _ in reserved] == [0, 1]  # the leading part that fits
    again = dp.reserve_new(keys[:2], OBJ)
    assert again == []  # existing keys are skipped
    dp.abort([keys[i] for i, _ in reserved])
    assert l1.object_count() == 0


def test_objects_of_another_layout_size_are_misses() -> None:
    dp, _, _ = make()
    store(dp, TOKENS, 2 * C)
    dp.register_layout("m", 1, 2 * OBJ)  # the model re-registered with a bigger KV shape
    dp.lookup(key(TOKENS, "r"))
    assert dp.query("r") == (True, 0)
    k = key(TOKENS, "r", end=2 * C, worker=0)
    assert dp.acquire_for_read(dp.keys_of(k, dp.range_hashes(k), 0), 2 * OBJ, request_id="r") is None


def test_keys_of_shares_key_objects_but_never_the_list() -> None:
    dp, _, _ = make()
    k = key(TOKENS, "r")
    hashes = dp.chunk_hashes(k)
    first = dp.keys_of(k, hashes)
    second = dp.keys_of(key(TOKENS, "other"), hashes)
    assert first == second and first is not second
    assert all(a is b for a, b in zip(first, second, strict=True))
    first.clear()  # a caller mutating its list does not touch the next caller's
    assert dp.keys_of(k, hashes) == second
    # Same length and last hash but another prefix: compared in full, never reused.
    forged = [b"\x01" * 32] + hashes[1:]
    assert [x.chunk_hash for x in dp.keys_of(k, forged)] == forged
    # Another namespace gets its own keys.
    salted = RequestKey("m", 1, None, TOKENS, 0, 4 * C, "r", cache_salt="t")
    assert {x.cache_salt for x in dp.keys_of(salted, hashes)} == {"t"}
