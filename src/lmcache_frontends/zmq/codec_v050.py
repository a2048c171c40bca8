"""LMCache 0.5.0's wire codec: `RequestType` numbers (enum order), fixed payload counts, typed replies.

The numbers and payload counts are `protocol.RequestType` / `protocol.PAYLOAD_COUNTS` (shared with
the server as it stands). 22-36 are CacheBlend and P2P, which this server does not implement.
0.5.0 clients have no error frame: a reply whose type frame is not a known number kills the
client's poll thread, so a message that does not decode gets its type's failure value when it has
one, else no reply at all (the client times out; the server logs why).
"""

from __future__ import annotations

from collections.abc import Sequence
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
    read_engine_groups,
    read_int,
    read_list,
    read_map,
    read_str,
    reply,
    result_value,
)
from lmcache_frontends.zmq.fastkey import KeyFrameDecoder
from lmcache_frontends.zmq.protocol import (
    EXT_DEVICE_IPC_WRAPPER,
    NO_RESPONSE,
    PAYLOAD_COUNTS,
    ProtocolError,
    RequestType,
)
from lmcache_frontends.zmq.requests import (
    Clear,
    NotSupported,
    PickledTensorHandle,
    QueryPrefetchLookupHits,
    RegisterKVCache,
    Request,
)

VERSION = "0.5.0"

# CacheBlend and P2P numbers of 0.5.0 (name, payload count, response?): never implemented here.
UNSUPPORTED = MappingProxyType(
    {
        22: ("cb_register_kv_cache", 4, False), 23: ("cb_unregister_kv_cache", 1, False),
        24: ("cb_store_pre_computed", 4, True), 25: ("cb_lookup_pre_computed", 1, True),
        26: ("cb_retrieve_pre_computed", 5, True), 27: ("cb_store_final", 4, True),
        28: ("cb_lookup_pre_computed_v2", 1, True), 29: ("cb_retrieve_pre_computed_v2", 5, True),
        30: ("cb_register_rope_v3", 4, False), 31: ("cb_unregister_rope_v3", 1, False),
        32: ("cb_retrieve_pre_computed_v3", 5, True), 33: ("cb_unified_lookup", 2, True),
        34: ("p2p_lookup_and_lock", 2, True), 35: ("p2p_query_lookup_results", 1, True),
        36: ("p2p_unlock_objects", 1, False),
    }
)
# Where the client's own event handle sits in the unsupported transfers (echoed in `[h, false]`).
_EVENT_HANDLE_AT = {24: 3, 26: 4, 27: 3, 29: 4, 32: 4}

NAME_OF_TYPE = MappingProxyType({t.value: t.name.lower() for t in RequestType})


def _register_kv_cache(p: PayloadReader) -> Request:
    handles = []
    for ext in read_list(p.value(1), "kv_caches"):
        if not isinstance(ext, msgpack.ExtType) or ext.code != EXT_DEVICE_IPC_WRAPPER:
            raise ProtocolError("kv_caches entries must be Ext type 1 tensor handles")
        handles.append(PickledTensorHandle(ext.data))
    if not handles:
        raise ProtocolError("kv_caches must not be empty")
    return RegisterKVCache(
        instance_id=read_int(p.value(0), "instance_id"), kv_caches=tuple(handles),
        model_name=read_str(p.value(2), "model_name"), world_size=read_int(p.value(3), "world_size", minimum=1),
        engine_type=read_str(p.value(4), "engine_type"), layout_hints=read_map(p.value(5), "layout_hints"),
        engine_groups=read_engine_groups(p.value(6)),
    )


def _not_supported(number: int) -> PayloadParser:
    name = UNSUPPORTED[number][0]

    def parse(p: PayloadReader) -> Request:
        detail: dict[str, Any] = {}
        if number in _EVENT_HANDLE_AT:
            handle = p.value(_EVENT_HANDLE_AT[number])
            detail["event_handle"] = handle if isinstance(handle, bytes) else b""
        elif name == "p2p_lookup_and_lock":
            detail["keys"] = len(read_list(p.value(0), "keys"))
        elif name == "p2p_query_lookup_results":
            detail["task_id"] = read_int(p.value(0), "task_id")
        return NotSupported(name, "p2p" if name.startswith("p2p") else "cacheblend", detail)

    return parse


PARSERS: dict[int, PayloadParser] = {
    **{RequestType[name.upper()].value: parse for name, parse in common_parsers(with_readers=False).items()},
    RequestType.REGISTER_KV_CACHE.value: _register_kv_cache,
    RequestType.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT.value: lambda p: parse_register_ed(p, optional_slots=False),
    RequestType.QUERY_PREFETCH_LOOKUP_HITS.value: lambda p: QueryPrefetchLookupHits(read_str(p.value(0), "request_id")),
    RequestType.CLEAR.value: lambda p: Clear(force=True),  # 0.5.0's CLEAR always forces
    **{number: _not_supported(number) for number in UNSUPPORTED},
}
PAYLOADS: dict[int, int] = {
    **{t.value: n for t, n in PAYLOAD_COUNTS.items()}, **{n: spec[1] for n, spec in UNSUPPORTED.items()},
}
RESPONDS: dict[int, bool] = {
    **{t.value: t not in NO_RESPONSE for t in RequestType}, **{n: spec[2] for n, spec in UNSUPPORTED.items()},
}


def operation_of(op: int | str) -> str | None:
    """The operation name of a 0.5.0 type number (None: not a 0.5.0 number)."""
    if isinstance(op, str):
        return None
    if op in UNSUPPORTED:
        return UNSUPPORTED[op][0]
    return NAME_OF_TYPE.get(op)


def _resolve(op: int | str) -> tuple[str, int, PayloadParser] | None:
    name = operation_of(op)
    if name is None:
        return None
    return name, PAYLOADS[int(op)], PARSERS[int(op)]


def _not_supported_value(number: int, request: NotSupported) -> Any:
    """The failure each unsupported 0.5.0 type's client reads as "nothing here"."""
    detail = request.detail
    if number in _EVENT_HANDLE_AT:
        return [detail.get("event_handle", b""), False]
    if number in (25, 28):
        return []  # no pre-computed matches
    if number == 33:
        return UNIFIED_LOOKUP_MISS
    if number == 34:
        return p2p_miss_task(int(detail.get("keys", 0)))
    if number == 35:
        return p2p_miss_addresses(int(detail.get("task_id", 0)))
    return None


class CodecV050:
    """Frames of LMCache 0.5.0 clients <-> typed requests and results."""

    version = VERSION

    def __init__(self, key_decoder: KeyFrameDecoder | None = None) -> None:
        self._keys = key_decoder if key_decoder is not None else KeyFrameDecoder()
        self._names = OperationNames(operation_of)

    def operation(self, frames: Sequence[bytes]) -> str | None:
        return self._names(frames[1]) if len(frames) >= 2 else None

    def decode(self, frames: Sequence[bytes]) -> Envelope:
        return decode_message(frames, self._keys, _resolve)

    def _number(self, envelope: Envelope) -> int:
        return int(msgpack.unpackb(envelope.op))

    def encode(self, envelope: Envelope, result: Any) -> list[Frames]:
        if no_reply(result):
            return []
        number = self._number(envelope)
        request = envelope.request
        if isinstance(request, NotSupported):
            value = _not_supported_value(number, request)
            return [reply(envelope.uid, envelope.op, value, has_response=RESPONDS[number])]
        return [reply(envelope.uid, envelope.op, result_value(result), has_response=RESPONDS[number])]

    def failure(self, envelope: Envelope) -> list[Frames]:
        value = envelope.request.failure()
        if no_reply(value):
            return []
        if value is None and RESPONDS[self._number(envelope)]:
            return []  # no failure value for a type that answers: stay silent (as 0.5.0 itself)
        return self.encode(envelope, value)

    def error(self, error: WireError) -> list[Frames]:
        # Only a known type can be answered (any other type frame kills the client's poll
        # thread); a known type with a failure value gets it, others get nothing.
        if not error.uid or error.operation is None:
            return []
        number = int(msgpack.unpackb(error.op))
        failure = _FAILURES.get(number)
        if failure is None:
            return [[error.uid, error.op]] if not RESPONDS[number] else []
        return [reply(error.uid, error.op, failure, has_response=True)]


# The failure value of each answering type, for messages too broken to build a request from.
_FAILURES: dict[int, Any] = {
    RequestType.STORE.value: [b"", False],
    RequestType.RETRIEVE.value: [b"", False],
    RequestType.PREPARE_STORE.value: {"context": {"slots": [], "chunk_indices": []}},
    RequestType.PREPARE_RETRIEVE.value: {"success": False, "data": b"", "context": {}},
    RequestType.COMMIT_STORE.value: False,
    RequestType.COMMIT_RETRIEVE.value: False,
    RequestType.QUERY_PREFETCH_STATUS.value: 0,
    RequestType.WAIT_PREFETCH_STATUS.value: 0,
    RequestType.QUERY_PREFETCH_LOOKUP_HITS.value: 0,
    RequestType.PING.value: False,
    RequestType.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT.value: {"shm_name": "", "pool_size": 0},
}
