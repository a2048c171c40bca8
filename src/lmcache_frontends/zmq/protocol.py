"""Wire primitives both LMCache protocols share: msgpack framing, keys, and 0.5.0's type numbers.

The codecs (`codec_v050.py`, `codec_v056.py`) build on these; our client library (`client.py`)
speaks 0.5.0 with them and writes token arrays in a fixed-width form the server decodes fast
(`fastkey.py`)."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import msgpack
import numpy as np

from lmcache_core.errors import InvalidKeyError
from lmcache_core.hashing import TokenBytes
from lmcache_core.lookup import RequestKey

EXT_DEVICE_IPC_WRAPPER = 1


class RequestType(IntEnum):
    """Request type numbers of LMCache 0.5.0 (22-36: CacheBlend and P2P, not served)."""

    REGISTER_KV_CACHE = 1
    UNREGISTER_KV_CACHE = 2
    STORE = 3
    RETRIEVE = 4
    LOOKUP = 5
    QUERY_PREFETCH_STATUS = 6
    WAIT_PREFETCH_STATUS = 7
    QUERY_PREFETCH_LOOKUP_HITS = 8
    FREE_LOOKUP_LOCKS = 9
    END_SESSION = 10
    REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT = 11
    UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT = 12
    PREPARE_STORE = 13
    COMMIT_STORE = 14
    PREPARE_RETRIEVE = 15
    COMMIT_RETRIEVE = 16
    CLEAR = 17
    GET_CHUNK_SIZE = 18
    PING = 19
    REPORT_BLOCK_ALLOCATION = 20
    NOOP = 21


PAYLOAD_COUNTS: dict[RequestType, int] = {
    RequestType.REGISTER_KV_CACHE: 7,
    RequestType.UNREGISTER_KV_CACHE: 1,
    RequestType.STORE: 4,
    RequestType.RETRIEVE: 5,
    RequestType.LOOKUP: 2,
    RequestType.QUERY_PREFETCH_STATUS: 1,
    RequestType.WAIT_PREFETCH_STATUS: 2,
    RequestType.QUERY_PREFETCH_LOOKUP_HITS: 1,
    RequestType.FREE_LOOKUP_LOCKS: 2,
    RequestType.END_SESSION: 1,
    RequestType.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: 1,
    RequestType.UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: 1,
    RequestType.PREPARE_STORE: 2,
    RequestType.COMMIT_STORE: 3,
    RequestType.PREPARE_RETRIEVE: 2,
    RequestType.COMMIT_RETRIEVE: 2,
    RequestType.CLEAR: 0,
    RequestType.GET_CHUNK_SIZE: 0,
    RequestType.PING: 1,
    RequestType.REPORT_BLOCK_ALLOCATION: 3,
    RequestType.NOOP: 0,
}

# Types whose declared result is None: the reply is [identity, uid, type] with no response frame.
NO_RESPONSE: frozenset[RequestType] = frozenset(
    {
        RequestType.REGISTER_KV_CACHE,
        RequestType.UNREGISTER_KV_CACHE,
        RequestType.LOOKUP,
        RequestType.FREE_LOOKUP_LOCKS,
        RequestType.END_SESSION,
        RequestType.UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT,
        RequestType.CLEAR,
        RequestType.REPORT_BLOCK_ALLOCATION,
    }
)

class ProtocolError(ValueError):
    """A frame that does not decode into what its request type declares."""


class EncodedFrame(bytes):
    """A payload already encoded as one msgpack frame; `encode` passes it through unchanged."""

    __slots__ = ()


class PreEncoded:
    """A payload already encoded as one msgpack frame in a buffer (a numpy array, say): `encode`
    hands its memoryview on, so the frame is never copied into a bytes object."""

    __slots__ = ("buffer",)

    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer


def encode(obj: Any) -> bytes | memoryview:
    """One frame, as msgspec encodes it: smallest ints, float64, bin for bytes, maps in order."""
    if isinstance(obj, EncodedFrame):
        return obj
    if isinstance(obj, PreEncoded):
        return obj.buffer
    return msgpack.packb(obj, use_bin_type=True, default=_default)


# One token on the wire in fixed width: msgpack's uint32 tag (0xce) + 4 big-endian bytes.
# Both fields are copied as raw bytes ("<u4" on both sides: no byte swap on any host).
WIRE_TOKEN = np.dtype([("tag", "u1"), ("value", "<u4")])
UINT32_TAG = 0xCE


def array_header(n: int) -> bytes:
    """The msgpack header of an n-element array."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_token_array(tokens: TokenBytes) -> bytes:
    """The msgpack array of `tokens`, every id as a uint32 (`ce` + 4 bytes): valid msgpack that
    any decoder reads as the same ints (the spec allows non-minimal widths; msgspec and
    msgpack-python accept them), built with one numpy copy instead of one Python int per token.
    A server that knows the form (ours: `zmq.fastkey`) decodes it the same way."""
    header = array_header(len(tokens) // 4)
    array = np.empty(len(header) + len(tokens) // 4 * WIRE_TOKEN.itemsize, dtype=np.uint8)
    _write_token_array(array, header, tokens)
    return array.tobytes()


def _write_token_array(out: np.ndarray[Any, Any], header: bytes, tokens: TokenBytes) -> None:
    """`encode_token_array`'s bytes written into `out` (exactly that long)."""
    out[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    records = out[len(header) :].view(WIRE_TOKEN)
    records["tag"] = UINT32_TAG
    records["value"] = np.frombuffer(tokens, dtype="<u4")


_KEY_MAP_HEADER = b"\x88"  # a map of the 8 key fields


def key_frame_ends(key: RequestKey) -> tuple[bytes, bytes]:
    """The bytes of `key`'s frame before and after its token array (fields in wire order)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    head = [_KEY_MAP_HEADER]
    for name, value in (("model_name", key.model_name), ("world_size", key.world_size), ("worker_id", key.worker_id)):
        head += (pack(name), pack(value))
    head.append(pack("token_ids"))
    tail: list[bytes] = []
    for name, value in (
        ("start", key.start), ("end", key.end), ("request_id", key.request_id), ("cache_salt", key.cache_salt)
    ):
        tail += (pack(name), pack(value))
    return b"".join(head), b"".join(tail)


def encode_key(key: RequestKey, token_array: bytes | None = None) -> EncodedFrame:
    """The `IPCCacheServerKey` frame of `key` (fields in wire order), its token ids in the
    fixed-width form of `encode_token_array` (pass `token_array` when it is at hand already)."""
    if token_array is None:
        tokens = key.token_ids if isinstance(key.token_ids, TokenBytes) else TokenBytes.from_tokens(key.token_ids)
        token_array = encode_token_array(tokens)
    head, tail = key_frame_ends(key)
    return EncodedFrame(b"".join((head, token_array, tail)))


def key_frame_buffer(
    key: RequestKey, tokens: TokenBytes, array_from: memoryview | None = None
) -> tuple[np.ndarray[Any, Any], slice]:
    """`encode_key`'s frame built in one numpy buffer (one allocation, no bytes copies), and
    where its token array lies in it. The array is written straight into it, or copied from
    `array_from` (the same tokens' encoded array, from an earlier frame). For clients that
    send it as `PreEncoded`."""
    head, tail = key_frame_ends(key)
    n = len(tokens) // 4
    header = array_header(n)
    length = len(header) + n * WIRE_TOKEN.itemsize
    if array_from is not None and len(array_from) != length:
        raise ValueError(f"array_from holds {len(array_from)} bytes, the array takes {length}")
    frame = np.empty(len(head) + length + len(tail), dtype=np.uint8)
    frame[: len(head)] = np.frombuffer(head, dtype=np.uint8)
    body = frame[len(head) : len(head) + length]
    if array_from is not None:
        body[:] = np.frombuffer(array_from, dtype=np.uint8)
    else:
        _write_token_array(body, header, tokens)
    frame[len(head) + length :] = np.frombuffer(tail, dtype=np.uint8)
    return frame, slice(len(head), len(head) + length)


def _default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def decode(frame: bytes) -> Any:
    """One frame; Ext type 1 stays an ExtType (its pickle is only read by the allow-list)."""
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None


def _int(value: Any, name: str, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{name} must be an integer, got {type(value).__name__}")
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{name} must be a string, got {type(value).__name__}")
    return value


def parse_key(obj: Any) -> RequestKey:
    """An `IPCCacheServerKey` map -> RequestKey (unknown fields ignored, cache_salt defaults)."""
    if not isinstance(obj, dict):
        raise ProtocolError("key must be a map")
    try:
        tokens = obj["token_ids"]
        # TokenBytes: the array as KeyFrameDecoder hands it over, already validated.
        if not isinstance(tokens, list | TokenBytes):
            raise ProtocolError("token_ids must be an array")
        return RequestKey(
            model_name=_str(obj["model_name"], "model_name"),
            world_size=_int(obj["world_size"], "world_size"),
            worker_id=_int(obj["worker_id"], "worker_id", allow_none=True),
            token_ids=tokens,
            start=_int(obj["start"], "start"),
            end=_int(obj["end"], "end"),
            request_id=_str(obj["request_id"], "request_id"),
            cache_salt=_str(obj.get("cache_salt", ""), "cache_salt"),
        )
    except KeyError as exc:
        raise ProtocolError(f"key is missing field {exc.args[0]}") from None
    except InvalidKeyError as exc:
        raise ProtocolError(str(exc)) from None


def key_to_wire(key: RequestKey) -> dict[str, Any]:
    """RequestKey -> the 8-field map, in wire order."""
    tokens = key.token_ids
    if isinstance(tokens, TokenBytes):
        tokens = np.frombuffer(tokens, dtype=">u4").tolist()
    elif not isinstance(tokens, list):
        tokens = [int(t) for t in tokens]
    return {
        "model_name": key.model_name,
        "world_size": key.world_size,
        "worker_id": key.worker_id,
        "token_ids": tokens,
        "start": key.start,
        "end": key.end,
        "request_id": key.request_id,
        "cache_salt": key.cache_salt,
    }
