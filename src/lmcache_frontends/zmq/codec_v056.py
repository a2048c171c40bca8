"""LMCache 0.5.6's wire codec: operations by frozen legacy number or by string name, typed replies.

0.5.6 names every operation (`store`, `lookup`, ...). Those that existed before name routing keep a
frozen number (`LEGACY_OPERATION_IDS`: `store` = 6, `lookup` = 8, `ping` = 22; 11 is retired);
newer ones travel as their msgpack string (`subscribe_kv_events`). Tensor handles are data-only
msgpack descriptors inside Ext type 1 (no pickle). An error reply echoes the uid with an op frame
naming the problem: the client's future then raises "Response operation '<problem>' does not match
request '<op>'" at once instead of timing out. See docs/protocol.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgpack

from lmcache_frontends.zmq.codec import (
    UNIFIED_LOOKUP_MISS,
    Envelope,
    Frames,
    OperationNames,
    PayloadParser,
    PayloadReader,
    WireError,
    common_parsers,
    decode_message,
    no_reply,
    p2p_miss_addresses,
    p2p_miss_task,
    parse_register_ed,
    read_bool,
    read_bytes,
    read_engine_groups,
    read_int,
    read_list,
    read_map,
    read_str,
    reply,
    result_value,
)
from lmcache_frontends.zmq.fastkey import KeyFrameDecoder
from lmcache_frontends.zmq.protocol import EXT_DEVICE_IPC_WRAPPER, ProtocolError, encode
from lmcache_frontends.zmq.requests import (
    Clear,
    GetCapabilities,
    NotSupported,
    RegisterKVCache,
    Request,
    StreamControl,
    TensorDescriptor,
)

VERSION = "0.5.6"

# The numbers 0.5.6 still sends for the operations that predate name routing (frozen upstream;
# 11 was query_prefetch_lookup_hits and is retired). Every other operation travels by name.
LEGACY_OPERATION_IDS = MappingProxyType(
    {
        "register_kv_cache": 1, "unregister_kv_cache": 2, "register_q_cache": 3, "unregister_q_cache": 4,
        "store_q": 5, "store": 6, "retrieve": 7, "lookup": 8, "query_prefetch_status": 9,
        "wait_prefetch_status": 10, "free_lookup_locks": 12, "end_session": 13,
        "register_kv_cache_engine_driven_context": 14, "unregister_kv_cache_engine_driven_context": 15,
        "prepare_store": 16, "commit_store": 17, "prepare_retrieve": 18, "commit_retrieve": 19, "clear": 20,
        "get_chunk_size": 21, "ping": 22, "report_block_allocation": 23, "noop": 24, "cb_register_rope": 25,
        "cb_unregister_rope": 26, "cb_retrieve_pre_computed": 27, "cb_unified_lookup": 28,
        "p2p_lookup_and_lock": 29, "p2p_query_lookup_results": 30, "p2p_unlock_objects": 31,
        "get_experimental": 32, "cb_protocol_handshake": 33,
    }
)
NAME_OF_ID = MappingProxyType({number: name for name, number in LEGACY_OPERATION_IDS.items()})


@dataclass(frozen=True, slots=True)
class OpSpec:
    """Payload count and whether a response frame is declared (None-typed ops have none)."""

    payloads: int
    response: bool


OPERATIONS: MappingProxyType[str, OpSpec] = MappingProxyType(
    {
        "register_kv_cache": OpSpec(7, False), "unregister_kv_cache": OpSpec(1, False),
        "register_q_cache": OpSpec(7, False), "unregister_q_cache": OpSpec(1, False), "store_q": OpSpec(4, True),
        "store": OpSpec(4, True), "retrieve": OpSpec(5, True), "lookup": OpSpec(2, False),
        "query_prefetch_status": OpSpec(1, True), "wait_prefetch_status": OpSpec(2, True),
        "free_lookup_locks": OpSpec(2, False), "end_session": OpSpec(1, False),
        "register_kv_cache_engine_driven_context": OpSpec(1, True),
        "unregister_kv_cache_engine_driven_context": OpSpec(1, False),
        "prepare_store": OpSpec(2, True), "commit_store": OpSpec(3, True), "prepare_retrieve": OpSpec(2, True),
        "commit_retrieve": OpSpec(2, True), "clear": OpSpec(1, False), "get_chunk_size": OpSpec(0, True),
        "ping": OpSpec(1, True), "report_block_allocation": OpSpec(3, False), "noop": OpSpec(0, True),
        "cb_register_rope": OpSpec(8, False), "cb_unregister_rope": OpSpec(1, False),
        "cb_retrieve_pre_computed": OpSpec(5, True), "cb_unified_lookup": OpSpec(2, True),
        "cb_reorder_plan": OpSpec(3, True), "cb_protocol_handshake": OpSpec(1, True),
        "p2p_lookup_and_lock": OpSpec(2, True), "p2p_query_lookup_results": OpSpec(1, True),
        "p2p_unlock_objects": OpSpec(1, False), "get_experimental": OpSpec(0, True),
        "subscribe_kv_events": OpSpec(4, True), "server_module_call": OpSpec(1, True),
    }
)

# Unsupported features: which operations belong to them.
FEATURES = MappingProxyType(
    {
        "register_q_cache": "query_transfer", "unregister_q_cache": "query_transfer", "store_q": "query_transfer",
        "cb_register_rope": "cacheblend", "cb_unregister_rope": "cacheblend",
        "cb_retrieve_pre_computed": "cacheblend", "cb_unified_lookup": "cacheblend", "cb_reorder_plan": "cacheblend",
        "cb_protocol_handshake": "cacheblend", "p2p_lookup_and_lock": "p2p", "p2p_query_lookup_results": "p2p",
        "p2p_unlock_objects": "p2p", "subscribe_kv_events": "kv_events", "server_module_call": "server_modules",
    }
)

_ITEMSIZE = {
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "uint8": 1, "int8": 1, "int16": 2, "int32": 4,
    "int64": 8, "float8_e4m3fn": 1, "float8_e5m2": 1, "bool": 1,
}


def _descriptor(ext: Any) -> TensorDescriptor:
    """One Ext-1 body: the tagged msgpack descriptor of a shared tensor, checked for consistency."""
    if not isinstance(ext, msgpack.ExtType) or ext.code != EXT_DEVICE_IPC_WRAPPER:
        raise ProtocolError("kv_caches entries must be Ext type 1 tensor descriptors")
    try:
        raw = msgpack.unpackb(ext.data, raw=False, strict_map_key=True)
    except Exception:
        raise ProtocolError("a tensor descriptor is not msgpack (0.5.0 pickles are not accepted here)") from None
    body = read_map(raw, "tensor descriptor")
    kind = read_str(body.get("type"), "tensor descriptor type")
    if body.get("version") != 1:
        raise ProtocolError(f"tensor descriptor version {body.get('version')!r} is not 1")
    meta = read_map(body.get("metadata"), "tensor metadata")
    dtype = read_str(meta.get("dtype"), "dtype")
    shape = tuple(read_int(v, "shape[]", minimum=0) for v in read_list(meta.get("shape"), "shape"))
    stride = tuple(read_int(v, "stride[]", minimum=0) for v in read_list(meta.get("stride"), "stride"))
    if len(shape) != len(stride):
        raise ProtocolError("tensor shape and stride ranks differ")
    offset = read_int(meta.get("storage_offset"), "storage_offset", minimum=0)
    common: dict[str, Any] = {"kind": kind, "dtype": dtype, "shape": shape, "stride": stride, "storage_offset": offset,
              "device_uuid": read_str(meta.get("device_uuid"), "device_uuid")}
    span = 0 if 0 in shape else _ITEMSIZE.get(dtype, 0) * (offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)))
    if kind == "cpu_shm":
        if dtype not in _ITEMSIZE:
            raise ProtocolError(f"unsupported tensor dtype {dtype!r}")
        nbytes = read_int(body.get("nbytes"), "nbytes", minimum=0)
        if span > nbytes:
            raise ProtocolError(f"tensor view ({span} bytes) exceeds its shared-memory segment ({nbytes} bytes)")
        return TensorDescriptor(**common, shm_name=read_str(body.get("shm_name"), "shm_name"), nbytes=nbytes)
    if kind == "cuda":
        handle = tuple(read_list(body.get("handle"), "handle"))
        if len(handle) != 8:
            raise ProtocolError("a cuda descriptor handle has 8 fields")
        return TensorDescriptor(**common, cuda_handle=handle)
    if kind == "cuda_raw":
        ipc = read_bytes(body.get("ipc_handle"), "ipc_handle")
        if len(ipc) != 64:
            raise ProtocolError("a cuda_raw ipc_handle is 64 bytes")
        return TensorDescriptor(**common, ipc_handle=ipc, alloc_offset=read_int(body.get("alloc_offset"), "alloc_offset",
                                minimum=0), nbytes=read_int(body.get("nbytes"), "nbytes", minimum=0))
    return TensorDescriptor(**common, extra={k: v for k, v in body.items() if k not in ("type", "version", "metadata")})


def _register_kv_cache(p: PayloadReader) -> Request:
    handles = tuple(_descriptor(x) for x in read_list(p.value(1), "kv_cache"))
    if not handles:
        raise ProtocolError("kv_cache must not be empty")
    return RegisterKVCache(
        instance_id=read_int(p.value(0), "instance_id"), kv_caches=handles,
        model_name=read_str(p.value(2), "model_name"), world_size=read_int(p.value(3), "world_size", minimum=1),
        engine_type=read_str(p.value(4), "engine_type"), layout_hints=read_map(p.value(5), "layout_hints"),
        engine_groups=read_engine_groups(p.value(6)),
    )


def _not_supported(name: str) -> PayloadParser:
    def parse(p: PayloadReader) -> Request:
        detail: dict[str, Any] = {}
        if name in ("store_q",):
            detail["event_handle"] = p.value(3) if isinstance(p.value(3), bytes) else b""
        elif name == "cb_retrieve_pre_computed":
            detail["event_handle"] = p.value(4) if isinstance(p.value(4), bytes) else b""
        elif name == "p2p_lookup_and_lock":
            detail["keys"] = len(read_list(p.value(0), "keys"))
        elif name == "p2p_query_lookup_results":
            detail["task_id"] = read_int(p.value(0), "task_id")
        return NotSupported(name, FEATURES[name], detail)

    return parse


PARSERS: dict[str, PayloadParser] = {
    **common_parsers(with_readers=True),
    "register_kv_cache": _register_kv_cache,
    "register_kv_cache_engine_driven_context": lambda p: parse_register_ed(p, optional_slots=True),
    "clear": lambda p: Clear(read_bool(p.value(0), "force")),
    "get_experimental": lambda p: GetCapabilities(),
    **{name: _not_supported(name) for name in FEATURES},
}


def operation_of(op: int | str) -> str | None:
    """The operation name of an op frame's value; None when 0.5.6 has no such operation."""
    if isinstance(op, str):
        return op if op in OPERATIONS else None
    return NAME_OF_ID.get(op)


def _resolve(op: int | str) -> tuple[str, int, PayloadParser] | None:
    name = operation_of(op)
    if name is None:
        return None
    return name, OPERATIONS[name].payloads, PARSERS[name]


def _not_supported_value(request: NotSupported) -> Any:
    """What the 0.5.6 client reads as "not supported" (each chosen from the client's own use)."""
    name, detail = request.operation, request.detail
    if name in ("store_q", "cb_retrieve_pre_computed"):
        return [detail.get("event_handle", b""), False]  # the transfer failed
    if name == "cb_unified_lookup":
        return UNIFIED_LOOKUP_MISS
    if name == "cb_reorder_plan":
        return []  # "keep the prompt as it is"
    if name == "cb_protocol_handshake":
        return [0, False]  # server blend protocol 0: incompatible with every client
    if name == "p2p_lookup_and_lock":
        return p2p_miss_task(int(detail.get("keys", 0)))  # a task id that encodes the key count
    if name == "p2p_query_lookup_results":
        return p2p_miss_addresses(int(detail.get("task_id", 0)))  # one miss per key
    if name == "subscribe_kv_events":
        return {"enabled": False, "incarnation": 0, "next_cursor": 0, "lost": False, "events": []}
    if name == "server_module_call":
        return {"success": False, "payload": b"", "error": "server modules are not supported by lmcache-server"}
    return None  # None-typed operations: the empty acknowledgement


class CodecV056:
    """Frames of LMCache 0.5.6 clients <-> typed requests and results."""

    version = VERSION

    def __init__(self, key_decoder: KeyFrameDecoder | None = None) -> None:
        self._keys = key_decoder if key_decoder is not None else KeyFrameDecoder()
        self._names = OperationNames(operation_of)

    def operation(self, frames: Sequence[bytes]) -> str | None:
        if len(frames) < 2:
            return None
        return "stream_control" if frames[1] == b"" else self._names(frames[1])

    def decode(self, frames: Sequence[bytes]) -> Envelope:
        if len(frames) >= 2 and frames[1] == b"":
            # Stream control: [uid, b"", b"ack" | b"cancel"] (no msgpack on this path).
            action = frames[2].decode("ascii", "replace") if len(frames) == 3 else ""
            return Envelope(frames[0], frames[1], "stream_control", StreamControl(action))
        return decode_message(frames, self._keys, _resolve)

    def encode(self, envelope: Envelope, result: Any) -> list[Frames]:
        if no_reply(result):
            return []
        request = envelope.request
        if isinstance(request, NotSupported):
            return self._not_supported(envelope, request)
        spec = OPERATIONS[envelope.operation]
        value = result_value(result)
        # As the 0.5.6 server: a None result (also of `int | None` types) sends no response frame.
        return [reply(envelope.uid, envelope.op, value, has_response=spec.response and value is not None)]

    def _not_supported(self, envelope: Envelope, request: NotSupported) -> list[Frames]:
        value = _not_supported_value(request)
        first = reply(envelope.uid, envelope.op, value, has_response=value is not None)
        if request.operation == "subscribe_kv_events":
            return [first, [envelope.uid, envelope.op]]  # a disabled batch, then the end of the stream
        return [first]

    def failure(self, envelope: Envelope) -> list[Frames]:
        value = envelope.request.failure()
        if no_reply(value):
            return []
        return self.encode(envelope, value)

    def error(self, error: WireError) -> list[Frames]:
        if not error.uid:
            return []  # nothing to address the reply to
        problem = f"lmcache-server error: {error.problem}"
        return [[error.uid, bytes(encode(problem))]]

    @staticmethod
    def is_not_supported(request: Request) -> bool:
        return isinstance(request, NotSupported)
