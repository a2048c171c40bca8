"""The coordinator's wire forms: what a 0.5.6 or 0.5.0 server sends parses, anything else is a
422 naming the field, and a batch survives a round trip."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from lmcache_core.errors import UnprocessableError
from lmcache_core.fleet.model import LEGACY_BACKEND, Entry, EventBatch, Op, Tier
from lmcache_core.fleet.wire import (
    batch_to_json,
    legacy_batch,
    parse_events,
    parse_legacy_events,
    parse_register,
    parse_token_query,
    token_array,
)
from lmcache_core.keys import ObjectKey

KEY = {"chunk_hash_hex": "ab" * 32, "model_name": "test-model", "kv_rank": 16777472, "object_group_id": 0, "cache_salt": ""}


def wire_batch(**over: Any) -> dict[str, Any]:
    batch = {
        "instance_id": "srv-1",
        "incarnation": 1796378311,
        "seq": 3,
        "event_type": "store",
        "tier": "l1",
        "backend": "dram",
        "entries": [{"key": KEY, "size_bytes": 262144, "token_ids": [], "token_offset": -1}],
        "shared": False,
        "ts": 1796378315.35,
        "capacity_bytes": 0,
        "capacity_revision": 0,
    }
    batch.update(over)
    return batch


def test_a_056_server_batch_parses() -> None:
    (b,) = parse_events({"batches": [wire_batch()]})
    assert (b.instance_id, b.incarnation, b.seq, b.tier, b.backend, b.shared) == ("srv-1", 1796378311, 3, Tier.L1, "dram", False)
    assert b.entries == (Entry(Op.STORE, ObjectKey.from_json(KEY), 262144),)


def test_config_and_access_batches() -> None:
    config, access = parse_events(
        {
            "batches": [
                wire_batch(event_type="config", entries=[], tier="l2", backend="mock", capacity_bytes=1 << 30, capacity_revision=2),
                wire_batch(event_type="access", backend="", entries=[{"key": KEY, "size_bytes": 0}]),
            ]
        }
    )
    assert config.capacity is not None and config.capacity.capacity_bytes == 1 << 30 and config.capacity.revision == 2
    assert access.entries[0].op is Op.ACCESS and access.backend == ""


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"backend": ""}, "backend must be non-empty for store"),
        ({"seq": 0}, "seq must be in"),
        ({"incarnation": -1}, "incarnation must be in"),
        ({"incarnation": True}, "incarnation must be an integer"),
        ({"tier": "all"}, "tier must be"),
        ({"event_type": "evict"}, "event_type must be"),
        ({"instance_id": ""}, "instance_id must not be empty"),
        ({"instance_id": "a\nb"}, "control characters"),
        ({"entries": [{"key": {**KEY, "chunk_hash_hex": "XYZ"}}]}, "chunk_hash_hex"),
        ({"entries": [{"key": KEY, "size_bytes": -1}]}, "size_bytes must be in"),
        ({"event_type": "config", "entries": [{"key": KEY}]}, "carry no entries"),
        ({"seq": 2**60}, "seq must be in"),
    ],
)
def test_a_bad_batch_is_refused_naming_the_field(over: dict[str, Any], message: str) -> None:
    with pytest.raises(UnprocessableError, match=message):
        parse_events({"batches": [wire_batch(**over)]})


def test_not_an_object_is_refused() -> None:
    for body in ([], "x", {"batches": "no"}, {"batches": [1]}):
        with pytest.raises(UnprocessableError):
            parse_events(body)


def test_batch_to_json_round_trips() -> None:
    key = ObjectKey.from_json(KEY)
    for batch in (
        EventBatch("s", 5, 9, Tier.L2, "s3", True, (Entry(Op.STORE, key, 10),), 1.5),
        EventBatch("s", 5, 10, Tier.L1, "dram", False, (Entry(Op.DELETE, key),), 1.5),
        EventBatch("s", 5, 11, Tier.L1, "", False, (Entry(Op.ACCESS, key),), 1.5),
    ):
        assert parse_events({"batches": [batch_to_json(batch)]}) == [batch]
    with pytest.raises(ValueError, match="one operation"):
        batch_to_json(EventBatch("s", 1, 1, Tier.L2, "x", False, (Entry(Op.STORE, key, 1), Entry(Op.DELETE, key))))


def test_a_050_report_parses_as_one_shared_legacy_batch() -> None:
    inst, seq, entries = parse_legacy_events(
        {
            "instance_id": "old",
            "seq": 4,
            "events": [
                {"type": "store", "key": KEY, "bytes": 100},
                {"type": "lookup", "key": KEY, "bytes": 0},
                {"type": "delete", "key": KEY, "bytes": 0},
            ],
        }
    )
    assert [e.op for e in entries] == [Op.STORE, Op.ACCESS, Op.DELETE] and entries[0].size_bytes == 100
    batch = legacy_batch(inst, 7, seq, entries)
    assert (batch.incarnation, batch.seq, batch.backend, batch.shared, batch.legacy) == (7, 4, LEGACY_BACKEND, True, True)
    with pytest.raises(UnprocessableError, match="type must be"):
        parse_legacy_events({"instance_id": "x", "seq": 1, "events": [{"type": "evict", "key": KEY, "bytes": 0}]})


def test_registration() -> None:
    info = parse_register({"instance_id": "  ", "ip": " 10.0.0.2 ", "http_port": 8080}, now=5.0)
    assert info.instance_id.startswith("mp-") and info.ip == "10.0.0.2" and info.base_url == "http://10.0.0.2:8080"
    for bad in ({"ip": " ", "http_port": 1}, {"ip": "h", "http_port": 0}, {"ip": "h", "http_port": 1, "metadata": {"a": 1}}):
        with pytest.raises(UnprocessableError):
            parse_register(bad, now=0.0)


def test_token_queries_in_every_form() -> None:
    tokens = list(range(600))
    a = parse_token_query({"model_name": "m", "token_ids": tokens})
    b64 = base64.b64encode(np.asarray(tokens, dtype="<u4").tobytes()).decode()
    b = parse_token_query({"model_name": "m", "tokens_b64": b64})
    assert a.token_ids is not None and b.token_ids is not None and np.array_equal(a.token_ids, b.token_ids)
    h = parse_token_query({"model_name": "m", "chunk_hashes": ["ab" * 32]}, hashes_allowed=True)
    assert h.chunk_hashes == (b"\xab" * 32,)
    for bad in (
        {"model_name": "m", "token_ids": [1, -1]},
        {"model_name": "m", "token_ids": [1, 2**32]},
        {"model_name": "m", "token_ids": [1, "2"]},
        {"model_name": "m", "token_ids": [1.5]},
        {"model_name": "m", "tokens_b64": "abc"},
        {"model_name": "m", "token_ids": [1], "tokens_b64": "AAAAAA=="},
        {"model_name": "", "token_ids": [1]},
        {"model_name": "m@x", "token_ids": [1]},
        {"model_name": "m", "cache_salt": "a/b"},
        {"model_name": "m", "world_size": 0},
        {"model_name": "m", "chunk_hashes": ["zz"]},
    ):
        with pytest.raises(UnprocessableError):
            parse_token_query(bad)
    assert token_array([]).dtype == np.uint32
