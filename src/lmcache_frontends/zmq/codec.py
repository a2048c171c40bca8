"""What both wire codecs share: the envelope, protocol errors, typed payload readers, result encoding.

A message is `[identity, uid, op, *payloads]`; codecs see it without the identity. The uid and op
frames are echoed verbatim in the reply, so the codec keeps them in an `Envelope` beside the typed
request. Everything here is pure: bytes in, typed values out, and back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack

from lmcache_core.errors import InvalidKeyError
from lmcache_frontends.zmq.fastkey import KeyFrameDecoder
from lmcache_frontends.zmq.protocol import ProtocolError, decode, encode, parse_key
from lmcache_frontends.zmq.requests import (
    BlockAllocation,
    EngineDrivenContext,
    EngineGroup,
    NoReply,
    Request,
    RetrieveSlots,
    Slot,
    StoreSlots,
    TransferDone,
)

Frames = list[bytes]
"""One message without the identity frame: [uid, op, *payloads] or a reply [uid, op, *response]."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded request with the frames its reply echoes; `operation` is the op's stable name."""

    uid: bytes
    op: bytes
    operation: str
    request: Request


class WireError(ProtocolError):
    """A message that does not decode into a request: names the problem, and keeps the frames an
    error reply needs (`operation` is None when the op itself is unknown)."""

    def __init__(self, problem: str, uid: bytes = b"", op: bytes = b"", operation: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.uid = uid
        self.op = op
        self.operation = operation


class WireCodec(Protocol):
    """One protocol version: frames <-> typed requests and results."""

    version: str

    def operation(self, frames: Sequence[bytes]) -> str | None:
        """The operation name of [uid, op, *payloads] from its op frame alone (payloads are not
        decoded); None for an op this version does not have. What the transport's lane choice
        and the frame caps read, before the payloads are decoded on the lane's thread."""
        ...

    def decode(self, frames: Sequence[bytes]) -> Envelope:
        """[uid, op, *payloads] -> an Envelope; raises WireError naming the problem."""
        ...

    def encode(self, envelope: Envelope, result: Any) -> list[Frames]:
        """The reply messages (usually one; none for NoReply) of a typed result."""
        ...

    def failure(self, envelope: Envelope) -> list[Frames]:
        """The request's own failure reply; the empty acknowledgement for types without one."""
        ...

    def error(self, error: WireError) -> list[Frames]:
        """The reply to a message that did not decode (possibly none: see each codec)."""
        ...


# -- typed payload readers ---------------------------------------------------------------------


def read_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{name} must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ProtocolError(f"{name} must be >= {minimum}, got {value}")
    return value


def read_optional_int(value: Any, name: str) -> int | None:
    return None if value is None else read_int(value, name)


def read_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{name} must be a boolean, got {type(value).__name__}")
    return value


def read_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def read_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{name} must be a string, got {type(value).__name__}")
    return value


def read_bytes(value: Any, name: str) -> bytes:
    if not isinstance(value, bytes):
        raise ProtocolError(f"{name} must be bin, got {type(value).__name__}")
    return value


def read_map(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{name} must be a map, got {type(value).__name__}")
    return value


def read_list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ProtocolError(f"{name} must be an array, got {type(value).__name__}")
    return value


def read_int_tuple(value: Any, name: str) -> tuple[int, ...]:
    return tuple(read_int(v, f"{name}[]") for v in read_list(value, name))


def read_block_ids(value: Any) -> tuple[tuple[int, ...], ...]:
    return tuple(read_int_tuple(group, "block_ids[]") for group in read_list(value, "block_ids"))


def read_engine_groups(value: Any) -> tuple[EngineGroup, ...]:
    groups = []
    for raw in read_list(value, "engine_group_infos"):
        g = read_map(raw, "engine_group_infos[]")
        try:
            groups.append(
                EngineGroup(
                    engine_group_id=read_int(g["engine_group_id"], "engine_group_id"),
                    layer_indices=read_int_tuple(g["layer_indices"], "layer_indices"),
                    tokens_per_block=read_int(g.get("tokens_per_block", 0), "tokens_per_block"),
                    sw_size_tokens=read_int(g.get("sw_size_tokens", -1), "sw_size_tokens"),
                    extra_object_group_tag=read_int(g.get("extra_object_group_tag", 0), "extra_object_group_tag"),
                    recurrent_state=read_bool(g.get("recurrent_state", False), "recurrent_state"),
                )
            )
        except KeyError as exc:
            raise ProtocolError(f"engine_group_infos entry is missing {exc.args[0]}") from None
    return tuple(groups)


def read_block_allocations(value: Any) -> tuple[BlockAllocation, ...]:
    out = []
    for raw in read_list(value, "records"):
        r = read_map(raw, "records[]")
        try:
            out.append(
                BlockAllocation(
                    req_id=read_str(r["req_id"], "req_id"),
                    new_block_ids=read_int_tuple(r["new_block_ids"], "new_block_ids"),
                    new_token_ids=read_int_tuple(r["new_token_ids"], "new_token_ids"),
                )
            )
        except KeyError as exc:
            raise ProtocolError(f"block allocation record is missing {exc.args[0]}") from None
    return tuple(out)


class PayloadReader:
    """Decodes one message's payload frames on demand; key frames go through the shared
    KeyFrameDecoder (the fast path for long token arrays) and then `parse_key`."""

    def __init__(self, frames: Sequence[bytes], key_decoder: KeyFrameDecoder) -> None:
        self.frames = frames
        self._keys = key_decoder

    def value(self, i: int) -> Any:
        return decode(self.frames[i])

    def key_map(self, i: int) -> dict[str, Any]:
        fast = self._keys.decode(self.frames[i])
        return read_map(decode(self.frames[i]) if fast is None else fast, "key")

    def key(self, i: int) -> tuple[Any, dict[str, Any]]:
        """(RequestKey, the raw map): the map holds the version-specific extra fields."""
        raw = self.key_map(i)
        try:
            return parse_key(raw), raw
        except InvalidKeyError as exc:
            raise ProtocolError(str(exc)) from None


# -- result encoding (identical in both versions) ----------------------------------------------


def slot_map(slot: Slot) -> dict[str, Any]:
    return {"offset": slot.offset, "length": slot.length, "shape": list(slot.shape), "dtype": slot.dtype}


def result_value(result: Any) -> Any:
    """A typed result as the msgpack value both versions send (dataclasses as maps by field
    name, in the declaration order msgspec uses)."""
    if isinstance(result, EngineDrivenContext):
        return {"shm_name": result.shm_name, "pool_size": result.pool_size}
    if isinstance(result, StoreSlots):
        if result.pickle_mode:
            return {"context": {}}
        return {"context": {"slots": [slot_map(s) for s in result.slots], "chunk_indices": list(result.chunk_indices)}}
    if isinstance(result, RetrieveSlots):
        context = {"slots": [slot_map(s) for s in result.slots]} if result.success and not result.data else {}
        return {"success": result.success, "data": result.data, "context": context}
    if isinstance(result, TransferDone):
        return [result.event_handle, result.ok]
    if isinstance(result, tuple):
        return list(result)
    return result


def reply(envelope_uid: bytes, op: bytes, value: Any, *, has_response: bool) -> Frames:
    """[uid, op] plus the encoded value when the operation declares a response."""
    if not has_response:
        return [envelope_uid, op]
    return [envelope_uid, op, bytes(encode(value))]


def no_reply(result: Any) -> bool:
    return isinstance(result, NoReply)


def decode_op(frame: bytes) -> int | str:
    """The op frame: an int (both versions) or a str (0.5.6 names)."""
    try:
        value = msgpack.unpackb(frame, raw=False)
    except Exception:
        raise WireError("the operation frame is not msgpack", op=frame) from None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise WireError(f"the operation frame must be an int or a string, got {type(value).__name__}", op=frame)
    return value


class OperationNames:
    """op frame bytes -> operation name, memoised: an op frame is one to a few bytes and a
    client sends the same few over and over, so the name is a dict lookup after the first time.
    Only frames that name an operation are remembered (a bounded set: each operation has a
    handful of valid msgpack encodings)."""

    def __init__(self, name_of: Callable[[int | str], str | None]) -> None:
        self._name_of = name_of
        self._names: dict[bytes, str] = {}

    def __call__(self, op: bytes) -> str | None:
        name = self._names.get(op)
        if name is not None:
            return name
        try:
            name = self._name_of(decode_op(op))
        except WireError:
            return None
        if name is not None and len(self._names) < 4096:
            self._names[op] = name
        return name


PayloadParser = Callable[[PayloadReader], Request]
OpResolver = Callable[[int | str], "tuple[str, int, PayloadParser] | None"]
"""An op frame's value -> (operation name, payload count, parser); None for an unknown op."""


def decode_message(frames: Sequence[bytes], keys: KeyFrameDecoder, resolve: OpResolver) -> Envelope:
    """[uid, op, *payloads] -> Envelope, the same steps for both versions; every problem is a
    WireError that keeps the uid (so the reply can be addressed) and names the operation."""
    if len(frames) < 2:
        raise WireError(f"a request needs a uid and an operation frame, got {len(frames)} frame(s)")
    uid, op = frames[0], frames[1]
    try:
        value = decode_op(op)
    except WireError as exc:
        raise WireError(exc.problem, uid, op) from None
    found = resolve(value)
    if found is None:
        raise WireError(f"unknown operation {value!r}", uid, op)
    name, count, parse = found
    payloads = frames[2:]
    if len(payloads) != count:
        raise WireError(f"{name} takes {count} payload(s), got {len(payloads)}", uid, op, name)
    try:
        request = parse(PayloadReader(payloads, keys))
    except WireError:
        raise
    except ProtocolError as exc:
        raise WireError(f"{name}: {exc}", uid, op, name) from None
    return Envelope(uid, op, name, request)


# -- "not supported" values both versions share --------------------------------------------------

MAX_P2P_KEYS = 1 << 16
"""At most this many "miss" addresses in one not-supported P2P result."""

UNIFIED_LOOKUP_MISS = {"prefix_coverage_tokens": 0, "non_prefix_segments": [], "segmented_prefix_segments": []}
"""CB_UNIFIED_LOOKUP's "nothing cached": the client recomputes."""


def p2p_miss_task(keys: int) -> int:
    """A P2P lookup task id that needs no server state: -1 - (number of keys)."""
    return -1 - min(max(0, keys), MAX_P2P_KEYS)


def p2p_miss_addresses(task_id: int) -> list[dict[str, int]]:
    """The result of a `p2p_miss_task` id: one invalid address (a miss) per key."""
    n = -1 - task_id if -1 - MAX_P2P_KEYS <= task_id <= -1 else 0
    return [{"offset": -1, "size": 0}] * n


# -- payload parsers of the operations both versions have ---------------------------------------


def _key_fields(p: PayloadReader, i: int, with_readers: bool) -> dict[str, Any]:
    key, raw = p.key(i)
    readers = read_int(raw.get("num_kv_readers", 0), "num_kv_readers", minimum=0) if with_readers else 0
    return {"key": key, "readers": readers}


def common_parsers(*, with_readers: bool) -> dict[str, PayloadParser]:
    """Operation name -> payload parser, for the operations whose payloads both versions share
    (`with_readers`: the key carries 0.5.6's `num_kv_readers`)."""
    from lmcache_frontends.zmq import requests as r

    def k(p: PayloadReader) -> dict[str, Any]:
        return _key_fields(p, 0, with_readers)

    def iid(p: PayloadReader, i: int = 1) -> int:
        return read_int(p.value(i), "instance_id")

    return {
        "unregister_kv_cache": lambda p: r.UnregisterKVCache(read_int(p.value(0), "instance_id")),
        "store": lambda p: r.Store(**k(p), instance_id=iid(p), block_ids=read_block_ids(p.value(2)),
                                   event_handle=read_bytes(p.value(3), "event_ipc_handle")),
        "retrieve": lambda p: r.Retrieve(**k(p), instance_id=iid(p), block_ids=read_block_ids(p.value(2)),
                                         event_handle=read_bytes(p.value(3), "event_ipc_handle"),
                                         skip_first_n_tokens=read_int(p.value(4), "skip_first_n_tokens", minimum=0)),
        "lookup": lambda p: r.Lookup(**k(p), tp_size=read_int(p.value(1), "tp_size", minimum=1)),
        "free_lookup_locks": lambda p: r.FreeLookupLocks(**k(p), tp_size=read_int(p.value(1), "tp_size", minimum=1)),
        "query_prefetch_status": lambda p: r.QueryPrefetchStatus(read_str(p.value(0), "request_id")),
        "wait_prefetch_status": lambda p: r.WaitPrefetchStatus(read_str(p.value(0), "request_id"),
                                                               read_float(p.value(1), "timeout")),
        "end_session": lambda p: r.EndSession(read_str(p.value(0), "request_id")),
        "unregister_kv_cache_engine_driven_context":
            lambda p: r.UnregisterEngineDrivenContext(read_int(p.value(0), "instance_id")),
        "prepare_store": lambda p: r.PrepareStore(**k(p), instance_id=iid(p)),
        "commit_store": lambda p: r.CommitStore(**k(p), instance_id=iid(p), data=read_bytes(p.value(2), "data")),
        "prepare_retrieve": lambda p: r.PrepareRetrieve(**k(p), instance_id=iid(p)),
        "commit_retrieve": lambda p: r.CommitRetrieve(**k(p), instance_id=iid(p)),
        "get_chunk_size": lambda p: r.GetChunkSize(),
        "ping": lambda p: r.Ping(read_optional_int(p.value(0), "instance_id")),
        "report_block_allocation": lambda p: r.ReportBlockAllocation(
            read_int(p.value(0), "instance_id"), read_str(p.value(1), "model_name"), read_block_allocations(p.value(2))),
        "noop": lambda p: r.Noop(),
    }


REGISTER_ED_FIELDS = (
    "instance_id", "model_name", "world_size", "block_size", "num_layers", "hidden_dim_size", "dtype_str", "use_mla",
)


def parse_register_ed(p: PayloadReader, *, optional_slots: bool) -> Request:
    """The engine-driven registration map (0.5.6 adds `num_physical_slots`, may be null)."""
    from lmcache_frontends.zmq.requests import RegisterEngineDrivenContext

    meta = read_map(p.value(0), "payload")
    missing = [f for f in REGISTER_ED_FIELDS if f not in meta]
    if missing:
        raise ProtocolError(f"engine-driven registration is missing {', '.join(missing)}")
    slots = meta.get("num_physical_slots") if optional_slots else None
    return RegisterEngineDrivenContext(
        instance_id=read_int(meta["instance_id"], "instance_id"),
        model_name=read_str(meta["model_name"], "model_name"),
        world_size=read_int(meta["world_size"], "world_size", minimum=1),
        block_size=read_int(meta["block_size"], "block_size", minimum=1),
        num_layers=read_int(meta["num_layers"], "num_layers", minimum=1),
        hidden_dim_size=read_int(meta["hidden_dim_size"], "hidden_dim_size", minimum=1),
        dtype=read_str(meta["dtype_str"], "dtype_str"),
        use_mla=read_bool(meta["use_mla"], "use_mla"),
        num_physical_slots=None if slots is None else read_int(slots, "num_physical_slots", minimum=1),
    )
