"""The wire protocol: captured 0.5.0 frames as test vectors, and a live in-process server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmcache_adapters.memory.shm_pool import SharedMemoryPool
from lmcache_frontends.bootstrap import bootstrap
from lmcache_frontends.client import LMCacheClient, make_key
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import RawClient, raw_request
from lmcache_frontends.zmq.protocol import (
    RequestType,
    decode,
    encode,
    encode_key,
    key_to_wire,
    parse_key,
)
from lmcache_frontends.zmq.server import ZmqDataPathServer

CAPTURES = Path("/work/shared/protocol-captures")
if not CAPTURES.exists():
    CAPTURES = Path(__file__).resolve().parents[4] / "shared" / "protocol-captures"


def _plain(value: Any) -> tuple[bool, Any]:
    """The captured decoded value as a Python object; False when it was abbreviated."""
    if isinstance(value, dict):
        if "__bytes__" in value:
            return True, bytes.fromhex(value["hex"])
        if "__intlist__" in value or "__ext__" in value:
            return False, None
        out = {}
        for k, v in value.items():
            ok, pv = _plain(v)
            if not ok:
                return False, None
            out[k] = pv
        return True, out
    if isinstance(value, list):
        items = [_plain(v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    return True, value


def _vectors() -> list[tuple[str, bytes, Any]]:
    vectors = []
    for path in sorted(CAPTURES.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            for frame in rec.get("frames", []):
                raw = bytes.fromhex(frame["hex_head"])
                if len(raw) != frame["len"]:
                    continue  # only the head was captured
                ok, value = _plain(frame["decoded"])
                if ok:
                    vectors.append((f"{path.stem}:{rec.get('type')}", raw, value))
    return vectors


VECTORS = _vectors()


def test_captures_present() -> None:
    assert len(VECTORS) > 100


@pytest.mark.parametrize(("where", "raw", "value"), VECTORS, ids=[v[0] for v in VECTORS])
def test_encoder_and_decoder_match_captured_bytes(where: str, raw: bytes, value: Any) -> None:
    assert encode(value) == raw
    assert decode(raw) == value


def test_key_encoding_is_byte_exact() -> None:
    expect = bytes.fromhex(
        "88aa6d6f64656c5f6e616d65a16daa776f726c645f73697a6501a9776f726b65725f6964c0a9746f6b656e5f696473"
        "93010203a57374617274 00a3656e6403aa726571756573745f6964a27231aa63616368655f73616c74a0".replace(" ", "")
    )
    key = make_key("m", [1, 2, 3], "r1", end=3)
    assert encode(key_to_wire(key)) == expect
    assert key_to_wire(parse_key(decode(expect))) == key_to_wire(key)
    # Our client's frame: the same map, token ids in fixed width (ce + 4 bytes each).
    fixed = encode_key(key)
    assert fixed == expect.replace(bytes.fromhex("93010203"), bytes.fromhex("93ce00000001ce00000002ce00000003"))
    assert decode(fixed) == decode(expect)


def test_captured_lookup_key_head_matches() -> None:
    rec = next(
        json.loads(line) for line in (CAPTURES / "frames_cpu_ed.jsonl").read_text().splitlines()
        if json.loads(line).get("type") == "LOOKUP"
    )
    frame = rec["frames"][2]
    key = make_key("test-model", [0] + [9906] * 512, "req-0-cold", end=512)
    raw = encode(key_to_wire(key))
    assert len(raw) == frame["len"] and raw.hex().startswith(frame["hex_head"])


# --------------------------------------------------------------------------- live server


@pytest.fixture(scope="module")
def server() -> Iterator[ZmqDataPathServer]:
    pool = SharedMemoryPool(16 << 20, shm_suffix=f"test_{uuid.uuid4().hex[:8]}", prefault="none", pin_memory=False)
    services = bootstrap(ServerConfig(port=0, http_port=0, chunk_size=16), memory_pool=pool)
    srv = ZmqDataPathServer(services.engine, pool, clock=services.clock, port=0, max_workers=2)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        services.close()


@pytest.fixture
def client(server: ZmqDataPathServer) -> Iterator[LMCacheClient]:
    with LMCacheClient(server.url, timeout=5.0) as c:
        yield c


def raw_reply(server: ZmqDataPathServer, frames: list[bytes], timeout_ms: int = 300) -> list[bytes] | None:
    return raw_request(server.url, frames, timeout_ms)


def test_small_requests_answer_like_the_reference(server: ZmqDataPathServer) -> None:
    assert raw_reply(server, [b"\x00", b"\x12"]) == [b"\x00", b"\x12", b"\x10"]  # chunk 16 (a fixint)
    assert raw_reply(server, [b"\x01", b"\x06", encode("nosuch")]) == [b"\x01", b"\x06", b"\x00"]
    assert raw_reply(server, [b"\x02", b"\x13", encode(11)]) == [b"\x02", b"\x13", b"\xc3"]
    assert raw_reply(server, [b"\x03", b"\x0a", encode("nosuch")]) == [b"\x03", b"\x0a"]
    # (21, 0) from a client not recognised yet is 0.5.0's NOOP or 0.5.6's get_chunk_size: the
    # chunk size as a string satisfies both (docs/protocol.md section 5); a 0.5.0 client gets "OK".
    assert raw_reply(server, [b"\x04", b"\x15"]) == [b"\x04", b"\x15", encode("16")]
    assert raw_reply(server, [b"\x05", b"\x08", encode("nosuch")]) == [b"\x05", b"\x08", b"\x00"]


def test_malformed_frames_never_kill_the_loop(server: ZmqDataPathServer, client: LMCacheClient) -> None:
    # From a client not recognised yet, nothing can be addressed safely: dropped.
    assert raw_reply(server, [b"\x00", encode(99)]) is None  # undefined type
    assert raw_reply(server, [b"\x00", b"\xc1"]) is None  # not msgpack
    assert raw_reply(server, [b"\x00"]) is None  # too few frames
    assert raw_reply(server, [b"\x07", b"\x06"]) is None  # (6, 0): in neither protocol
    with RawClient(server.url) as raw:
        assert raw.request([b"\x00", b"\x12"]) == [b"\x00", b"\x12", b"\x10"]  # GET_CHUNK_SIZE: 0.5.0
        assert raw.request([b"\x01", encode(99)]) is None  # an unknown type kills a 0.5.0 poll thread
        # wrong payload count / undecodable payload: the type's failure value
        assert raw.request([b"\x07", b"\x06"]) == [b"\x07", b"\x06", b"\x00"]
        assert raw.request([b"\x08", b"\x0e", b"\xc1", b"\x00", b"\xc4\x00"]) == [b"\x08", b"\x0e", b"\xc2"]
        # CacheBlend: answered with what a 0.5.0 client reads as "nothing pre-computed"
        assert raw.request([b"\x09", encode(25), encode("k")]) == [b"\x09", encode(25), encode([])]
        assert raw.request([b"\x0a", b"\x15"]) == [b"\x0a", b"\x15", encode("OK")]  # NOOP, once recognised
    assert client.noop() == "OK"
    assert server.report_status()["is_healthy"] is True


def test_engine_driven_round_trip_and_edge_replies(client: LMCacheClient) -> None:
    import torch

    ctx = client.register_engine_driven(11, model_name="sem", num_layers=1, hidden_dim_size=8)
    assert not ctx.pickle_mode and ctx.shm_name.startswith("lmcache_l1_pool_test_")
    tokens = list(range(100, 100 + 33))  # 2 full chunks of 16
    key = make_key("sem", tokens, "w1", end=32, worker_id=0)
    chunks = [torch.randn(ctx.object_shape).half() for _ in range(2)]
    assert client.store_engine_driven(ctx, key, chunks) is True
    # a second commit of the same key has nothing pending
    assert client.call(RequestType.COMMIT_STORE, key_to_wire(key), 11, b"") is False
    client.lookup(make_key("sem", tokens, "r1"))
    assert client.wait_for_lookup("r1") == 2
    got = client.retrieve_engine_driven(ctx, make_key("sem", tokens, "r1", end=32, worker_id=0))
    assert got is not None and all(torch.equal(a, b) for a, b in zip(chunks, got, strict=True))
    client.end_session("r1")
    client.clear()
    # chunks no longer in L1: the retrieve fails with 0.5.0's failure reply
    reply = client.call(RequestType.PREPARE_RETRIEVE, key_to_wire(make_key("sem", tokens, "r2", end=32, worker_id=0)), 11)
    assert reply == {"success": False, "data": b"", "context": {}}
    # PREPARE_STORE with nil worker_id: answered with the type's failure value (0.5.0 stays
    # silent and the engine waits out its timeout)
    reply = client.call(RequestType.PREPARE_STORE, key_to_wire(make_key("sem", tokens, "x", end=32)), 11, timeout=5)
    assert reply == {"context": {"slots": [], "chunk_indices": []}}
    client.unregister_engine_driven(11)


def test_silent_worker_is_reaped_and_its_uncommitted_write_discarded() -> None:
    from lmcache_core.clock import ManualClock

    pool = SharedMemoryPool(4 << 20, shm_suffix=f"test_{uuid.uuid4().hex[:8]}", prefault="none", pin_memory=False)
    services = bootstrap(ServerConfig(port=0, http_port=0, chunk_size=16), memory_pool=pool)
    clock = ManualClock()
    srv = ZmqDataPathServer(services.engine, pool, clock=clock, port=0, worker_reap_timeout_seconds=30)
    srv.start()
    try:
        with LMCacheClient(srv.url, timeout=5.0) as client:
            client.register_engine_driven(5, model_name="reap", num_layers=1, hidden_dim_size=8)
            assert client.ping(5) is True
            tokens = list(range(1, 33))
            reply = client.call(RequestType.PREPARE_STORE, key_to_wire(make_key("reap", tokens, "w", worker_id=0)), 5)
            assert len(reply["context"]["slots"]) == 2
            assert services.engine.storage.l1.object_count() == 2
            clock.advance(29)
            srv.housekeeping()
            assert 5 in srv.instances()
            clock.advance(2)
            srv.housekeeping()
            assert 5 not in srv.instances()
            # the half-written chunks were discarded, never published
            assert services.engine.storage.l1.object_count() == 0
            # unknown instance after reaping: the type's failure value (0.5.0 sends no reply)
            assert client.call(RequestType.COMMIT_STORE, key_to_wire(make_key("reap", tokens, "w", worker_id=0)), 5,
                               b"", timeout=5) is False
    finally:
        srv.stop()
        services.close()


def test_long_prompts_take_the_cached_key_path_with_identical_answers(
    server: ZmqDataPathServer, client: LMCacheClient
) -> None:
    import torch

    ctx = client.register_engine_driven(12, model_name="long", num_layers=1, hidden_dim_size=8)
    # Mixed msgpack widths (1, 2, 3 and 5 bytes), 256 chunks of 16 plus a partial one: a key
    # frame over the decoder's 4 KiB threshold.
    tokens = [(i * 2654435761) % (1 << 32) if i % 7 == 0 else i % 70000 for i in range(256 * 16 + 5)]
    chunks = [torch.full(ctx.object_shape, float(i % 1000)).half() for i in range(256)]
    assert client.store_engine_driven(ctx, make_key("long", tokens, "w", end=256 * 16, worker_id=0), chunks)
    dec = server.key_decoder
    hits_before, adopted_before = dec.hits, server.sessions.adopted_total
    for rid in ("a", "b", "a"):
        client.lookup(make_key("long", tokens, rid))  # our client: fixed-width token arrays
        assert client.wait_for_lookup(rid) == 256
    # The store's frames were read with numpy: every lookup recognises their token array.
    assert dec.fixed_width >= 1 and dec.hits >= hits_before + 3
    hits_before = dec.hits
    assert server.sessions.adopted_total >= adopted_before + 1  # "b" reused "a"'s hashes
    # A reference client's frames (smallest int widths) of the same prompt: the repeat cache.
    for _ in range(2):
        client.call(RequestType.LOOKUP, key_to_wire(make_key("long", tokens, "d")), 1)
        assert client.wait_for_lookup("d") == 256
    assert dec.hits >= hits_before + 1
    got = client.retrieve_engine_driven(ctx, make_key("long", tokens, "a", start=16 * 10, end=16 * 12, worker_id=0))
    assert got is not None and [float(t.flatten()[0]) for t in got] == [10.0, 11.0]
    # Another prompt with the same length but a different token misses past the change.
    other = list(tokens)
    other[16 * 5 + 3] += 1
    client.lookup(make_key("long", other, "c"))
    assert client.wait_for_lookup("c") == 5
    for rid in ("a", "b", "c", "d"):
        client.end_session(rid)
    client.unregister_engine_driven(12)
