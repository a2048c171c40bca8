"""SessionManager: incremental hashing, TTL expiry and the record of ended requests."""

from __future__ import annotations

import pytest

from lmcache_core.clock import ManualClock
from lmcache_core.hashing import TokenHasher
from lmcache_core.sessions import SessionManager


class CountingHasher(TokenHasher):
    """Counts how many chunks were hashed, to prove nothing is rehashed."""

    def __init__(self, *a: object, **k: object) -> None:
        super().__init__(*a, **k)  # type: ignore[arg-type]
        self.chunks_hashed = 0

    def hash_token_bytes(self, data, prev=None):  # type: ignore[no-untyped-def]
        out = super().hash_token_bytes(data, prev)
        self.chunks_hashed += len(out)
        return out


def make(ttl: float = 600.0, max_ended: int = 8) -> tuple[SessionManager, CountingHasher, ManualClock]:
    clock = ManualClock()
    hasher = CountingHasher("blake3", chunk_size=4)
    return SessionManager(hasher, clock=clock, ttl_seconds=ttl, max_ended=max_ended), hasher, clock


def test_growing_sequence_hashes_only_new_chunks_and_matches_one_shot() -> None:
    sm, hasher, _ = make()
    tokens = list(range(40))
    first = sm.chunk_hashes("r", tokens[:17], model_name="m", world_size=1)
    assert len(first) == 4 and hasher.chunks_hashed == 4
    again = sm.chunk_hashes("r", tokens[:17], model_name="m", world_size=1)
    assert again == first and hasher.chunks_hashed == 4
    full = sm.chunk_hashes("r", tokens, model_name="m", world_size=1)
    assert hasher.chunks_hashed == 10
    assert full == TokenHasher("blake3", chunk_size=4).chunk_hashes(tokens)


def test_reference_chain_value_for_bench_sequence() -> None:
    sm = SessionManager(TokenHasher("blake3", 256), clock=ManualClock())
    hashes = sm.chunk_hashes("req-0-cold", [0] + [9906] * 512, model_name="test-model", world_size=1)
    assert hashes[0].hex().startswith("d65391f7") and hashes[0].hex().endswith("9a336f")
    assert hashes[1].hex().startswith("4d033f8a") and hashes[1].hex().endswith("ea4b64")


def test_sessions_expire_after_ttl_and_are_really_removed() -> None:
    sm, _, clock = make(ttl=10.0)
    sm.chunk_hashes("old", list(range(8)), model_name="m", world_size=1)
    clock.advance(6)
    sm.chunk_hashes("young", list(range(8)), model_name="m", world_size=1)
    clock.advance(5)
    reaped = sm.reap()
    assert [r.request_id for r in reaped] == ["old"]
    assert sm.get("old") is None and sm.get("young") is not None
    assert sm.active_count() == 1
    assert sm.recent("old") is not None and sm.recent("old").reason == "expired"


def test_use_refreshes_ttl() -> None:
    sm, _, clock = make(ttl=10.0)
    sm.chunk_hashes("r", [1, 2, 3, 4], model_name="m", world_size=1)
    clock.advance(9)
    sm.chunk_hashes("r", [1, 2, 3, 4], model_name="m", world_size=1)
    clock.advance(9)
    assert sm.reap() == []


def test_ended_sessions_are_remembered_with_their_keys_and_bounded() -> None:
    sm, _, _ = make(max_ended=3)
    for i in range(5):
        sm.chunk_hashes(f"r{i}", list(range(8)), model_name="m", world_size=2, cache_salt="t")
        assert sm.end(f"r{i}") is not None
    assert sm.end("r4") is None
    assert sm.recent("r0") is None and sm.recent("r1") is None
    rec = sm.recent("r4")
    assert rec is not None
    keys = rec.keys()
    assert len(keys) == 4  # 2 chunks x 2 ranks, chunk-major
    assert [k.kv_rank for k in keys] == [0x02000200, 0x02010201, 0x02000200, 0x02010201]
    assert all(k.cache_salt == "t" for k in keys)


def test_invalid_ttl_rejected() -> None:
    with pytest.raises(ValueError):
        SessionManager(TokenHasher(), clock=ManualClock(), ttl_seconds=0)


def test_a_new_request_with_a_known_sequence_adopts_its_hashes() -> None:
    from lmcache_core.hashing import TokenBytes

    sessions, hasher, _ = make()
    tokens = TokenBytes.from_tokens(list(range(4 * 8 + 1)))
    first = sessions.chunk_hashes("a", tokens, model_name="m", world_size=1)
    assert hasher.chunks_hashed == 8
    again = sessions.chunk_hashes("b", tokens, model_name="m", world_size=1)
    assert again == first and hasher.chunks_hashed == 8 and sessions.adopted_total == 1
    # The adopted session keeps growing incrementally and ends with its keys.
    longer = TokenBytes.from_tokens(list(range(4 * 9)))
    expected = TokenHasher("blake3", chunk_size=4).chunk_hashes(longer)
    assert sessions.chunk_hashes("b", longer, model_name="m", world_size=1) == expected
    assert hasher.chunks_hashed == 8 + 1  # only the new ninth chunk
    record = sessions.end("b")
    assert record is not None and len(record.keys()) == 9
    # Plain lists are never matched against known sequences (no conversion cost to compare).
    sessions.chunk_hashes("c", list(range(4 * 8 + 1)), model_name="m", world_size=1)
    assert sessions.adopted_total == 1


def test_known_sequences_are_bounded() -> None:
    from lmcache_core.hashing import TokenBytes

    clock = ManualClock()
    hasher = CountingHasher("blake3", chunk_size=4)
    sessions = SessionManager(hasher, clock=clock, max_known_sequences=1)
    a, b = TokenBytes.from_tokens([1] * 8), TokenBytes.from_tokens([2] * 8)
    sessions.chunk_hashes("1", a, model_name="m", world_size=1)
    sessions.chunk_hashes("2", b, model_name="m", world_size=1)
    sessions.chunk_hashes("3", a, model_name="m", world_size=1)  # evicted: hashed again
    assert hasher.chunks_hashed == 6 and sessions.adopted_total == 0



def test_sessions_are_capped_per_client_and_overall() -> None:
    from lmcache_core.clients import ClientId

    clock = ManualClock()
    sm = SessionManager(TokenHasher("blake3", chunk_size=4), clock=clock, max_sessions=10, max_sessions_per_client=3)
    flood, honest = ClientId(b"flood"), ClientId(b"honest")
    sm.chunk_hashes("mine", [1, 2, 3, 4], model_name="m", world_size=1, client=honest)
    for i in range(50):
        sm.chunk_hashes(f"f{i}", [1, 2, 3, 4], model_name="m", world_size=1, client=flood)
    assert sm.count(flood) == 3 and sm.count(honest) == 1
    assert sm.get("mine") is not None and sm.get("f49") is not None and sm.get("f0") is None
    for i in range(4):
        sm.chunk_hashes(f"o{i}", [5, 6, 7, 8], model_name="m", world_size=1, client=ClientId(bytes([i])))
    assert sm.active_count() <= 10
    assert sm.report_status()["dropped_sessions_total"] >= 47
