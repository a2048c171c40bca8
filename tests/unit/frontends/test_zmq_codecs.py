"""The two wire codecs and protocol recognition, against frames captured from real LMCache clients.

tests/protocol_captures/frames_<version>_<case>.jsonl were recorded with
benchmarks/zmq_record_proxy.py between LMCache's own clients (its bench in both transfer modes and
several shapes, vLLM 0.32.0's connector, a probe of every operation) and LMCache's own server.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from lmcache_core.hashing import TokenBytes
from lmcache_core.lookup import RequestKey
from lmcache_frontends.zmq import requests as r
from lmcache_frontends.zmq.codec import Envelope, WireError
from lmcache_frontends.zmq.codec_v050 import CodecV050
from lmcache_frontends.zmq.codec_v056 import LEGACY_OPERATION_IDS, CodecV056
from lmcache_frontends.zmq.detect import SHARED_PAIRS, V050, V056, ProtocolDetector
from lmcache_frontends.zmq.fastkey import KeyFrameDecoder
from lmcache_frontends.zmq.protocol import encode, encode_key
from lmcache_frontends.zmq.requests import Slot

CAPTURES = Path(__file__).resolve().parents[2] / "protocol_captures"
REF_050 = Path.home() / ".cache" / "lmcache-reference" / "venv" / "bin" / "python"
REF_056 = Path.home() / ".cache" / "lmcache-reference-056" / "venv" / "bin" / "python"

# Operation name (as each codec reports it) -> the typed request it must decode into.
EXPECTED = {
    "get_chunk_size": r.GetChunkSize, "noop": r.Noop, "ping": r.Ping, "get_experimental": r.GetCapabilities,
    "register_kv_cache": r.RegisterKVCache, "unregister_kv_cache": r.UnregisterKVCache,
    "register_kv_cache_engine_driven_context": r.RegisterEngineDrivenContext,
    "unregister_kv_cache_engine_driven_context": r.UnregisterEngineDrivenContext,
    "store": r.Store, "retrieve": r.Retrieve, "lookup": r.Lookup, "free_lookup_locks": r.FreeLookupLocks,
    "query_prefetch_status": r.QueryPrefetchStatus, "wait_prefetch_status": r.WaitPrefetchStatus,
    "end_session": r.EndSession, "prepare_store": r.PrepareStore, "commit_store": r.CommitStore,
    "prepare_retrieve": r.PrepareRetrieve, "commit_retrieve": r.CommitRetrieve, "clear": r.Clear,
    "report_block_allocation": r.ReportBlockAllocation,
}


def _lines(version: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(CAPTURES.glob(f"frames_{version.replace('.', '')}_*.jsonl")):
        out += [(path.name, json.loads(line)) for line in path.read_text().splitlines()]
    return out


def _frames(line: dict[str, Any]) -> list[bytes] | None:
    """The recorded frames (without identity); None when a frame was too large to keep whole."""
    if any("hex" not in f for f in line["frames"]):
        return None
    return [bytes.fromhex(f["hex"]) for f in line["frames"]]


def _exchanges(version: str) -> list[tuple[str, list[bytes], list[bytes] | None]]:
    """(file, request frames, reply frames or None) for every request recorded whole."""
    out = []
    for name in sorted({n for n, _ in _lines(version)}):
        lines = [line for n, line in _lines(version) if n == name]
        replies = {(ln["client"], ln["frames"][0]["hex"]): ln for ln in lines if ln["dir"] == "s2c"}
        for ln in lines:
            if ln["dir"] != "c2s":
                continue
            frames = _frames(ln)
            if frames is None:
                continue
            answer = replies.get((ln["client"], ln["frames"][0]["hex"]))
            out.append((name, frames, _frames(answer) if answer is not None else None))
    return out


EX_056 = _exchanges("0.5.6")
EX_050 = _exchanges("0.5.0")


def test_the_captures_cover_what_the_real_clients_send() -> None:
    ops_056 = {msgpack.unpackb(f[1]) for _, f, _ in EX_056}
    # bench (both modes), vLLM's connector and the probe: every operation they send.
    for name in ("get_chunk_size", "get_experimental", "register_kv_cache", "register_kv_cache_engine_driven_context",
                 "lookup", "query_prefetch_status", "store", "retrieve", "prepare_store", "commit_store",
                 "prepare_retrieve", "commit_retrieve", "end_session", "ping", "report_block_allocation",
                 "unregister_kv_cache", "unregister_kv_cache_engine_driven_context", "clear", "noop",
                 "free_lookup_locks", "wait_prefetch_status"):
        assert LEGACY_OPERATION_IDS[name] in ops_056, name
    assert len(EX_056) > 150 and len(EX_050) > 15


@pytest.mark.parametrize(("version", "codec", "exchanges"), [
    (V056, CodecV056(), EX_056), (V050, CodecV050(), EX_050),
], ids=[V056, V050])
def test_every_captured_request_decodes_into_its_typed_request(version: str, codec: Any, exchanges: list) -> None:
    seen = set()
    for name, frames, _ in exchanges:
        env = codec.decode(frames)
        want = EXPECTED.get(env.operation, r.NotSupported)
        assert isinstance(env.request, want), (name, env)
        assert env.uid == frames[0] and env.op == frames[1]
        if isinstance(env.request, r.KeyRequest):
            key = env.request.key
            assert key.model_name and key.end > key.start >= 0 and len(key.token_ids) >= key.end
            assert env.request.readers == (1 if version == V056 else 0)
        seen.add(env.operation)
    assert {"lookup", "get_chunk_size", "end_session"} <= seen


@pytest.mark.parametrize(("version", "exchanges"), [(V056, EX_056), (V050, EX_050)], ids=[V056, V050])
def test_every_captured_request_is_recognised_as_its_version(version: str, exchanges: list) -> None:
    for name, frames, _ in exchanges:
        found, why = ProtocolDetector.classify(frames)
        pair = (msgpack.unpackb(frames[1]), len(frames) - 2)
        if pair in ((21, 0), (2, 1)):
            assert found == "ambiguous", (name, why)
        else:
            assert found == version, (name, pair, why)


def test_typed_fields_of_real_requests() -> None:
    codec = CodecV056()
    by_op: dict[str, r.Request] = {}
    for _, frames, _ in EX_056:
        env = codec.decode(frames)
        by_op.setdefault(env.operation, env.request)
    reg = by_op["register_kv_cache_engine_driven_context"]
    assert isinstance(reg, r.RegisterEngineDrivenContext)
    assert (reg.model_name, reg.num_layers, reg.num_physical_slots) == ("test-model", 2, 256)
    kv = by_op["register_kv_cache"]
    assert isinstance(kv, r.RegisterKVCache) and kv.engine_type == "vllm"
    handle = kv.kv_caches[0]
    assert isinstance(handle, r.TensorDescriptor) and handle.kind == "cpu_shm" and handle.device_uuid == "cpu"
    assert handle.shm_name.startswith("/lmcache_kv_") and handle.shape == (2, 64, 16, 2, 32)
    assert kv.engine_groups[0].layer_indices == (0, 1) and kv.engine_groups[0].tokens_per_block == 16
    store = by_op["store"]
    assert isinstance(store, r.Store) and store.event_handle == b"stub_ipc_handle" and store.block_ids[0][:3] == (0, 1, 2)
    assert isinstance(by_op["clear"], r.Clear)
    rba = by_op["report_block_allocation"]
    assert isinstance(rba, r.ReportBlockAllocation) and rba.records[0].new_block_ids


def test_0_5_0_tensor_handles_stay_pickles_for_the_allow_list() -> None:
    envs = [CodecV050().decode(f) for _, f, _ in EX_050]
    reg = next(e.request for e in envs if isinstance(e.request, r.RegisterKVCache))
    assert all(isinstance(h, r.PickledTensorHandle) and h.data[:1] == b"\x80" for h in reg.kv_caches)
    clear = [e.request for e in envs if isinstance(e.request, r.Clear)]
    assert all(c.force for c in clear)


def _result_from_reply(env: Envelope, value: Any) -> Any:
    """The typed result a handler would return for a recorded reply value."""
    req = env.request
    if isinstance(req, r.PrepareStore):
        ctx = value["context"]
        if not ctx:
            return r.StoreSlots(pickle_mode=True)
        return r.StoreSlots(tuple(Slot(s["offset"], s["length"], tuple(s["shape"]), s["dtype"]) for s in ctx["slots"]),
                            tuple(ctx["chunk_indices"]))
    if isinstance(req, r.PrepareRetrieve):
        slots = tuple(Slot(s["offset"], s["length"], tuple(s["shape"]), s["dtype"])
                      for s in value["context"].get("slots", []))
        return r.RetrieveSlots(value["success"], slots, value["data"])
    if isinstance(req, r.RegisterEngineDrivenContext):
        return r.EngineDrivenContext(value["shm_name"], value["pool_size"])
    if isinstance(req, r.Store | r.Retrieve):
        return r.TransferDone(value[0], value[1])
    if isinstance(req, r.GetCapabilities):
        return tuple(value)
    return value


@pytest.mark.parametrize(("codec", "exchanges"), [(CodecV056(), EX_056), (CodecV050(), EX_050)], ids=[V056, V050])
def test_our_replies_are_byte_identical_to_the_recorded_server_replies(codec: Any, exchanges: list) -> None:
    compared = 0
    for name, frames, answer in exchanges:
        env = codec.decode(frames)
        if answer is None or isinstance(env.request, r.NotSupported):
            continue
        value = msgpack.unpackb(answer[2], raw=False) if len(answer) > 2 else None
        if codec.version == V050 and len(answer) == 2 and value is None and env.operation in (
            "query_prefetch_status", "wait_prefetch_status"):
            continue
        ours = codec.encode(env, _result_from_reply(env, value))
        assert ours == [answer], (name, env.operation, ours, answer)
        compared += 1
    assert compared > 10


def test_the_ambiguous_pairs_are_exactly_the_shared_ones() -> None:
    assert SHARED_PAIRS == {(1, 7), (2, 1), (16, 2), (21, 0), (31, 1)}


def test_recognition_per_client_identity_and_the_override() -> None:
    det = ProtocolDetector()
    chunk_056 = [b"\x00", b"\x15"]  # (21, 0): 0.5.6 get_chunk_size or 0.5.0 NOOP
    chunk_050 = [b"\x00", b"\x12"]  # (18, 0): only 0.5.0
    d = det.detect(b"A", chunk_056)
    assert d.codec is det.ambiguous and not d.decided
    # Answered in the one form both clients decode: the chunk size as a decimal string.
    env = d.codec.decode(chunk_056)
    assert d.codec.encode(env, 256) == [[b"\x00", b"\x15", msgpack.packb("256")]]
    d = det.detect(b"A", [b"\x01", msgpack.packb(32)])  # get_experimental: only 0.5.6 sends (32, 0)
    assert d.decided and d.codec is det.codecs[V056] and det.version_of(b"A") == V056
    d = det.detect(b"B", chunk_050)
    assert d.decided and d.codec is det.codecs[V050]
    assert det.detect(b"B", chunk_056).codec is det.codecs[V050]  # recognised: now 0.5.0's NOOP
    assert det.counts() == {V050: 1, V056: 1}
    assert det.detect(b"C", [b"\x00", msgpack.packb(99)]).codec is None
    forced = ProtocolDetector("0.5.0")
    assert forced.detect(b"A", [b"\x00", msgpack.packb("lookup")]).codec is forced.codecs[V050]
    with pytest.raises(ValueError, match="protocol must be one of"):
        ProtocolDetector("0.6.0")


def test_shared_pairs_are_told_apart_by_content() -> None:
    prep_store_056 = next(f for _, f, _ in EX_056 if f[1] == b"\x10")
    assert ProtocolDetector.classify(prep_store_056)[0] == V056
    commit_retrieve_050 = next(f for _, f, _ in EX_050 if f[1] == b"\x10")
    assert ProtocolDetector.classify(commit_retrieve_050)[0] == V050
    reg_056 = next(f for _, f, _ in EX_056 if f[1] == b"\x01")
    reg_050 = next(f for _, f, _ in EX_050 if f[1] == b"\x01")
    assert ProtocolDetector.classify(reg_056)[0] == V056 and ProtocolDetector.classify(reg_050)[0] == V050
    assert ProtocolDetector.classify([b"\x00", b"\x1f", msgpack.packb(7)])[0] == V050
    assert ProtocolDetector.classify([b"\x00", b"\x1f", msgpack.packb([])])[0] == V056
    assert ProtocolDetector.classify([b"\x00", b"\x10", b"\x80", b"\x01"])[0] is None  # says nothing


@pytest.mark.parametrize(("frames", "problem"), [
    ([b"\x00"], "needs a uid and an operation"),
    ([b"\x00", msgpack.packb("no_such_op")], "unknown operation 'no_such_op'"),
    ([b"\x00", msgpack.packb(11)], "unknown operation 11"),
    ([b"\x00", msgpack.packb(8), b"\x01"], "lookup takes 2 payload(s), got 1"),
    ([b"\x00", msgpack.packb(8), msgpack.packb([]), b"\x01"], "lookup: key must be a map"),
    ([b"\x00", msgpack.packb(22), msgpack.packb("x")], "ping: instance_id must be an integer"),
    ([b"\x00", msgpack.packb(20), msgpack.packb(1)], "clear: force must be a boolean"),
    ([b"\x00", b"\xc1"], "not msgpack"),
])
def test_v056_errors_name_the_problem(frames: list[bytes], problem: str) -> None:
    with pytest.raises(WireError) as info:
        CodecV056().decode(frames)
    assert problem in str(info.value)


def test_v056_error_reply_is_a_mismatched_operation_naming_the_problem() -> None:
    codec = CodecV056()
    with pytest.raises(WireError) as info:
        codec.decode([b"\x07", msgpack.packb(8), b"\x01"])
    [reply] = codec.error(info.value)
    assert reply[0] == b"\x07" and msgpack.unpackb(reply[1]).startswith("lmcache-server error: lookup takes 2")


def test_v050_errors_answer_only_with_a_known_types_failure() -> None:
    codec = CodecV050()
    with pytest.raises(WireError) as info:
        codec.decode([b"\x03", msgpack.packb(14), b"\x01", b"\x02", msgpack.packb("not bin")])
    assert codec.error(info.value) == [[b"\x03", msgpack.packb(14), b"\xc2"]]  # COMMIT_STORE: false
    with pytest.raises(WireError) as info:
        codec.decode([b"\x03", msgpack.packb(99)])
    assert codec.error(info.value) == []  # an unknown type cannot be answered
    with pytest.raises(WireError) as info:
        codec.decode([b"\x03", msgpack.packb(5), b"\x01"])  # LOOKUP: None-typed
    assert codec.error(info.value) == [[b"\x03", msgpack.packb(5)]]


def test_failure_replies() -> None:
    c56, c50 = CodecV056(), CodecV050()
    frames = next(f for _, f, _ in EX_056 if f[1] == msgpack.packb(6))  # store
    env = c56.decode(frames)
    assert c56.failure(env) == [[frames[0], frames[1], encode([b"stub_ipc_handle", False])]]
    frames = next(f for _, f, _ in EX_050 if f[1] == msgpack.packb(13))  # 0.5.0 PREPARE_STORE
    env = c50.decode(frames)
    assert msgpack.unpackb(c50.failure(env)[0][2]) == {"context": {"slots": [], "chunk_indices": []}}
    lookup = c50.decode(next(f for _, f, _ in EX_050 if f[1] == msgpack.packb(5)))
    assert c50.failure(lookup) == [[lookup.uid, lookup.op]]


def _not_supported_056(name: str, *payloads: Any) -> tuple[Envelope, list[list[bytes]]]:
    codec = CodecV056()
    op = LEGACY_OPERATION_IDS.get(name, name)
    env = codec.decode([b"\x05", msgpack.packb(op), *[msgpack.packb(p, use_bin_type=True) for p in payloads]])
    assert isinstance(env.request, r.NotSupported)
    return env, codec.encode(env, None)


def test_v056_not_supported_replies() -> None:
    _, out = _not_supported_056("cb_protocol_handshake", 1)
    assert msgpack.unpackb(out[0][2]) == [0, False]
    _, out = _not_supported_056("p2p_lookup_and_lock", [{}, {}, {}], {})
    task = msgpack.unpackb(out[0][2])
    assert task == -4
    _, out = _not_supported_056("p2p_query_lookup_results", task)
    assert msgpack.unpackb(out[0][2]) == [{"offset": -1, "size": 0}] * 3
    _, out = _not_supported_056("subscribe_kv_events", 1, "m", 0, 64)
    assert msgpack.unpackb(out[0][2])["enabled"] is False and out[1] == out[0][:2]
    _, out = _not_supported_056("cb_unregister_rope", 1)
    assert out == [[b"\x05", msgpack.packb(26)]]


def test_stream_control_gets_no_reply() -> None:
    codec = CodecV056()
    env = codec.decode([b"\x05", b"", b"ack"])
    assert isinstance(env.request, r.StreamControl) and env.request.action == "ack"
    assert codec.failure(env) == []


def test_descriptor_checks() -> None:
    frames = next(f for _, f, _ in EX_056 if f[1] == b"\x01")
    handles = msgpack.unpackb(frames[3], raw=False)
    body = msgpack.unpackb(handles[0].data, raw=False)
    body["nbytes"] = 16  # smaller than the view: refused
    handles[0] = msgpack.ExtType(1, msgpack.packb(body))
    bad = [*frames[:3], msgpack.packb(handles), *frames[4:]]
    with pytest.raises(WireError, match="exceeds its shared-memory segment"):
        CodecV056().decode(bad)
    pickled = [*frames[:3], msgpack.packb([msgpack.ExtType(1, b"\x80\x04N.")]), *frames[4:]]
    with pytest.raises(WireError, match="not msgpack"):
        CodecV056().decode(pickled)


def test_long_keys_take_the_fast_decoder_in_both_codecs() -> None:
    tokens = TokenBytes.from_tokens(list(range(32768)))
    frame = bytes(encode_key(RequestKey("m", 1, None, tokens, 0, 32768, "rid")))
    for codec_cls, op in ((CodecV050, 5), (CodecV056, 8)):
        decoder = KeyFrameDecoder()
        codec = codec_cls(decoder)
        started = time.perf_counter()
        env = codec.decode([b"\x00", msgpack.packb(op), frame, b"\x01"])
        elapsed = time.perf_counter() - started
        assert decoder.fixed_width == 1 and env.request.key.token_ids == tokens
        assert elapsed < 0.05, elapsed  # msgpack ints would take ~2 ms; numpy well under that


# -- the real clients decode our replies ---------------------------------------------------------

_DECODE_056 = r'''
import json, sys, msgspec
from lmcache.v1.multiprocess.rpc import get_rpc_spec
from lmcache.v1.multiprocess.transport.zmq_impl.mq import msgspec_decode
from lmcache.v1.multiprocess.transport.zmq_impl.wire import decode_operation
out = []
for op, hexes in json.load(sys.stdin):
    frames = [bytes.fromhex(h) for h in hexes]
    spec = get_rpc_spec(op)
    got = decode_operation(frames[1])
    if got != op:
        out.append(["mismatch", got]); continue
    value = msgspec_decode(frames[2], cls=spec.response_type) if len(frames) > 2 else None
    out.append(["ok", repr(value)])
print(json.dumps(out))
'''

_DECODE_050 = r'''
import json, sys
from lmcache.v1.multiprocess.protocol import get_response_class
from lmcache.v1.multiprocess.protocols.base import RequestType
from lmcache.v1.multiprocess.mq import msgspec_decode
out = []
for op, hexes in json.load(sys.stdin):
    frames = [bytes.fromhex(h) for h in hexes]
    rtype = RequestType(msgspec_decode(frames[1], RequestType))
    value = msgspec_decode(frames[2], get_response_class(rtype)) if len(frames) > 2 else None
    out.append(["ok", repr(value)])
print(json.dumps(out))
'''


def _client_decode(python: Path, script: str, replies: list[tuple[Any, list[bytes]]]) -> list[list[str]]:
    data = json.dumps([[op, [f.hex() for f in frames]] for op, frames in replies])
    done = subprocess.run([str(python), "-c", script], input=data, capture_output=True, text=True, timeout=120,
                          env={"LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not REF_056.exists(), reason="the LMCache 0.5.6 reference venv is not installed")
def test_the_0_5_6_client_decodes_every_reply_we_send() -> None:
    codec = CodecV056()
    replies: list[tuple[Any, list[bytes]]] = []
    for _, frames, answer in EX_056:
        env = codec.decode(frames)
        if isinstance(env.request, r.NotSupported) or answer is None:
            continue
        value = msgpack.unpackb(answer[2], raw=False) if len(answer) > 2 else None
        for msg in codec.encode(env, _result_from_reply(env, value)) + codec.failure(env):
            replies.append((env.operation, msg))
    for name, payloads in (("cb_protocol_handshake", (1,)), ("cb_unified_lookup", None), ("cb_reorder_plan", None),
                           ("p2p_lookup_and_lock", ([], {})), ("p2p_query_lookup_results", (-3,)),
                           ("server_module_call", ({"method": "x", "payload": b""},)),
                           ("cb_retrieve_pre_computed", None), ("store_q", None)):
        if payloads is None:
            key = next(f for _, f, _ in EX_056 if f[1] == b"\x08")[2]
            payloads_frames = {
                "cb_unified_lookup": [key, msgpack.packb(1)], "cb_reorder_plan": [key, msgpack.packb(0), msgpack.packb(5)],
                "cb_retrieve_pre_computed": [key, msgpack.packb([]), msgpack.packb([[0]]), msgpack.packb(1),
                                             msgpack.packb(b"h", use_bin_type=True)],
                "store_q": [key, msgpack.packb(1), msgpack.packb([[0]]), msgpack.packb(b"h", use_bin_type=True)],
            }[name]
            env = codec.decode([b"\x09", msgpack.packb(LEGACY_OPERATION_IDS.get(name, name)), *payloads_frames])
            msgs = codec.encode(env, None)
        else:
            env, msgs = _not_supported_056(name, *payloads)
        replies += [(name, m) for m in msgs[:1]]
    replies.append(("get_chunk_size", ProtocolDetector().ambiguous.encode(
        Envelope(b"\x00", b"\x15", "get_chunk_size", r.GetChunkSize()), 256)[0]))
    results = _client_decode(REF_056, _DECODE_056, replies)
    assert all(status == "ok" for status, _ in results), [x for x in zip(replies, results, strict=True) if x[1][0] != "ok"]
    assert results[-1] == ["ok", "256"]  # the ambiguous reply, read as 0.5.6's int
    as_not_supported = dict(zip([n for n, _ in replies[-9:-1]], [v for _, v in results[-9:-1]], strict=True))
    assert as_not_supported["cb_protocol_handshake"] == "(0, False)"
    assert "prefix_coverage_tokens=0" in as_not_supported["cb_unified_lookup"]
    assert as_not_supported["p2p_query_lookup_results"].count("offset=-1") == 2
    # The error reply: the client sees a different operation and fails that call at once.
    with pytest.raises(WireError) as info:
        codec.decode([b"\x0a", msgpack.packb(8), b"\x01"])
    [[status, got]] = _client_decode(REF_056, _DECODE_056, [("lookup", codec.error(info.value)[0])])
    assert status == "mismatch" and got.startswith("lmcache-server error: lookup takes 2 payload(s)")


@pytest.mark.skipif(not REF_050.exists(), reason="the LMCache 0.5.0 reference venv is not installed")
def test_the_0_5_0_client_decodes_every_reply_we_send() -> None:
    codec = CodecV050()
    replies: list[tuple[Any, list[bytes]]] = []
    for _, frames, answer in EX_050:
        env = codec.decode(frames)
        if answer is None:
            continue
        value = msgpack.unpackb(answer[2], raw=False) if len(answer) > 2 else None
        for msg in codec.encode(env, _result_from_reply(env, value)) + codec.failure(env):
            replies.append((env.operation, msg))
    replies.append(("noop", ProtocolDetector().ambiguous.encode(
        Envelope(b"\x00", b"\x15", "get_chunk_size", r.GetChunkSize()), 256)[0]))
    results = _client_decode(REF_050, _DECODE_050, replies)
    assert all(status == "ok" for status, _ in results)
    assert results[-1] == ["ok", "'256'"]  # the ambiguous reply, read as 0.5.0 NOOP's str


def test_recognised_clients_are_bounded() -> None:
    det = ProtocolDetector(max_clients=2)
    for ident in (b"A", b"B", b"C"):
        assert det.detect(ident, [b"\x00", b"\x12"]).decided  # 0.5.0 GET_CHUNK_SIZE
    assert det.version_of(b"A") is None and det.version_of(b"C") == V050
    # A forgotten client is simply recognised again from its next message.
    assert det.detect(b"A", [b"\x01", b"\x12"]).decided


def test_an_undecodable_op_frame_is_still_answered_to_its_uid() -> None:
    codec = CodecV056()
    with pytest.raises(WireError) as info:
        codec.decode([b"\x07", b"\xc1"])
    [reply] = codec.error(info.value)
    assert reply[0] == b"\x07" and "not msgpack" in msgpack.unpackb(reply[1])
