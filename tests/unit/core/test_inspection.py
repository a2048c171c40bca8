"""RequestInspector and ReadinessRegistry: the core services admin routes ask instead of a frontend."""

from __future__ import annotations

import pytest

from lmcache_core.clock import ManualClock
from lmcache_core.errors import ConflictError, NotFoundError
from lmcache_core.hashing import TokenHasher
from lmcache_core.inspection import RequestInspector
from lmcache_core.keys import ObjectKey, kv_rank_for, request_keys
from lmcache_core.readiness import ReadinessRegistry
from lmcache_core.sessions import SessionManager

CHUNK = 4


def sessions() -> SessionManager:
    return SessionManager(TokenHasher("blake3", chunk_size=CHUNK), clock=ManualClock())


def test_nothing_attached_is_not_found_naming_the_data_path() -> None:
    with pytest.raises(NotFoundError, match="data path is not running"):
        RequestInspector(CHUNK).find("r")


def test_live_request_chunks_and_keys_of_every_rank() -> None:
    sm = sessions()
    inspector = RequestInspector(CHUNK)
    inspector.attach(sm)
    hashes = sm.chunk_hashes("r", list(range(3 * CHUNK)), model_name="m", world_size=2, cache_salt="t")
    req = inspector.find("r")
    assert (req.state, req.model_name, req.cache_salt, req.world_size, req.total_chunks) == ("live", "m", "t", 2, 3)
    assert [(c.index, c.token_start, c.token_end) for c in req.chunks] == [
        (i, i * CHUNK, (i + 1) * CHUNK) for i in range(3) for _ in range(2)
    ]
    assert [c.key for c in req.chunks] == [
        ObjectKey(h, "m", kv_rank_for(2, r), 0, "t") for h in hashes for r in range(2)
    ]


def test_token_bounds_select_overlapping_chunks_and_bad_bounds_are_value_errors() -> None:
    sm = sessions()
    inspector = RequestInspector(CHUNK)
    inspector.attach(sm)
    sm.chunk_hashes("r", list(range(4 * CHUNK)), model_name="m", world_size=1)
    assert [c.index for c in inspector.find("r", start=CHUNK + 1, end=3 * CHUNK).chunks] == [1, 2]
    assert [c.index for c in inspector.find("r", start=3 * CHUNK).chunks] == [3]
    with pytest.raises(ValueError, match="greater than start"):
        inspector.find("r", start=8, end=8)
    with pytest.raises(ValueError, match=">= 0"):
        inspector.find("r", start=-1)


def test_ended_request_is_found_with_its_reason_then_detach_forgets_the_source() -> None:
    sm = sessions()
    inspector = RequestInspector(CHUNK)
    inspector.attach(sm)
    sm.chunk_hashes("r", list(range(2 * CHUNK)), model_name="m", world_size=1)
    sm.end("r")
    assert inspector.find("r").state == "ended"
    with pytest.raises(NotFoundError, match="neither live nor"):
        inspector.find("other")
    inspector.detach(sm)
    assert not inspector.attached
    with pytest.raises(NotFoundError, match="not running"):
        inspector.find("r")


def test_inspection_builds_the_same_keys_as_the_data_path() -> None:
    # One key-building function: what inspection shows is what lookups lock and stores write.
    hashes = [b"\x01" * 16, b"\x02" * 16]
    assert request_keys("m", 4, "s", hashes) == [
        ObjectKey(h, "m", kv_rank_for(4, r), 0, "s") for h in hashes for r in range(4)
    ]
    assert request_keys("m", 4, "s", hashes, rank=2) == [ObjectKey(h, "m", kv_rank_for(4, 2), 0, "s") for h in hashes]


def test_readiness_registry_names_checks_and_refuses_duplicates() -> None:
    registry = ReadinessRegistry()
    registry.register("a", lambda: {"ok": True})
    registry.register("b", lambda: {"ok": False, "error": "x"})
    assert list(registry.checks()) == ["a", "b"]
    with pytest.raises(ConflictError, match="'a'"):
        registry.register("a", lambda: {"ok": True})
    registry.unregister("a")
    registry.unregister("a")  # idempotent: a stop after a failed start
    assert [name for name, check in registry.checks().items() if not check()["ok"]] == ["b"]
