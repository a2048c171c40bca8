"""Key-frame decoding that skips re-decoding a token array seen recently (engines resend it)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import msgpack
import numpy as np

from lmcache_core.hashing import TokenBytes
from lmcache_frontends.zmq.protocol import UINT32_TAG, WIRE_TOKEN

__all__ = ["KeyFrameDecoder"]

DEFAULT_MAX_ENTRIES = 64
# Frames shorter than this decode faster through msgpack than through this class.
_MIN_CACHED_BYTES = 4096


def _array_header(frame: bytes, start: int) -> tuple[int, int] | None:
    """(elements, header bytes) of the msgpack array at `frame[start]`; None when it is not one."""
    tag = frame[start]
    if 0x90 <= tag <= 0x9F:
        return tag & 0x0F, 1
    if tag == 0xDC:
        return int.from_bytes(frame[start + 1 : start + 3], "big"), 3
    if tag == 0xDD:
        return int.from_bytes(frame[start + 1 : start + 5], "big"), 5
    return None


def fixed_width_tokens(frame: bytes, start: int) -> tuple[TokenBytes, int] | None:
    """When the msgpack array at `frame[start]` holds only uint32-tagged ints (the fixed-width
    form `protocol.encode_token_array` writes), its tokens and its length in bytes, read with
    two numpy passes; None for any other array (the caller decodes it normally)."""
    found = _array_header(frame, start)
    if found is None:
        return None
    n, header = found
    length = header + n * WIRE_TOKEN.itemsize
    if n == 0 or start + length > len(frame):
        return None
    records = np.frombuffer(frame, dtype=WIRE_TOKEN, count=n, offset=start + header)
    if (records["tag"] != UINT32_TAG).any():
        return None
    # The value bytes are the big-endian uint32s TokenBytes holds: one strided copy.
    return TokenBytes(records["value"].tobytes()), length


_TOKEN_IDS_FIELD = msgpack.packb("token_ids")  # fixstr: a9 "token_ids"


def _unpacker(data: memoryview) -> msgpack.Unpacker:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, use_list=True)
    unpacker.feed(data)
    return unpacker


_MAX_FIELD_NAME_MATCHES = 4


def _fields_before_tokens(frame: bytes) -> tuple[int, dict[str, Any], int] | None:
    """(map size, the fields before `token_ids`, the offset of its array). The field name's
    bytes may also occur inside a string value (a model name, say): a match counts only when
    the fields before it parse to exactly its offset, and the next few matches are tried."""
    at = 0
    for _ in range(_MAX_FIELD_NAME_MATCHES):
        at = frame.find(_TOKEN_IDS_FIELD, at + 1)
        if at <= 0:
            return None
        head = _unpacker(memoryview(frame)[:at])
        try:
            count = head.read_map_header()
            out: dict[str, Any] = {}
            while head.tell() < at:
                name = head.unpack()
                if not isinstance(name, str) or name in out:
                    return None
                out[name] = head.unpack()
        except msgpack.OutOfData:
            continue  # this match sits inside a value
        if head.tell() != at or len(out) >= count:
            return None
        return count, out, at + len(_TOKEN_IDS_FIELD)
    return None


class KeyFrameDecoder:
    """Decodes `IPCCacheServerKey` maps, with `token_ids` as TokenBytes.

    Engines send the same token array again and again (LOOKUP, then FREE_LOOKUP_LOCKS, store and
    retrieve of the same request, and new requests with the same prompt). A recently seen array
    is recognised by a few sampled bytes and then confirmed by a byte-for-byte comparison with
    the stored copy (one memcmp, no hashing of the array): the same TokenBytes object comes
    back, so the session and key caches downstream also match it on identity. An array not seen
    recently is read with numpy when it is in the fixed-width form our client writes, or
    through msgpack otherwise (~2 ms of Python ints for 32k tokens), and remembered.

    A bounded LRU (`max_entries` arrays; 0 turns recognition off, and then only fixed-width
    arrays are handled). Anything unusual (not a map, a non-array or invalid `token_ids`,
    trailing bytes) answers None and the caller decodes normally, so errors are exactly the
    normal decoder's. Thread-safe."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._max = max(0, int(max_entries))
        self._cache: OrderedDict[tuple[bytes, ...], tuple[bytes, TokenBytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        """Arrays recognised as recently seen (no decoding at all)."""
        self.misses = 0
        """Arrays decoded through msgpack (not fixed-width, not seen recently)."""
        self.fixed_width = 0
        """Fixed-width arrays read with numpy (not seen recently)."""

    def decode(self, frame: bytes) -> dict[str, Any] | None:
        """The key map with `token_ids` as TokenBytes, or None (use the normal decoder).

        Only the few small fields around the token array go through msgpack: the array is found
        by its field name, and the fields before it must parse to exactly that offset (so a
        match inside some string value is never taken for the field)."""
        if len(frame) < _MIN_CACHED_BYTES:
            return None
        try:
            found = _fields_before_tokens(frame)
            if found is None:
                return None
            count, out, start = found
            sample = _sample(frame, start) if self._max else None
            recent = self._recent(frame, start, sample) if sample is not None else None
            if recent is not None:
                tokens, length = recent
            else:
                fixed = fixed_width_tokens(frame, start)
                region: bytes | None = None
                if fixed is not None:
                    tokens, length = fixed
                    self.fixed_width += 1
                else:
                    if sample is None:
                        return None
                    span = _unpacker(memoryview(frame)[start:])
                    span.skip()
                    length = span.tell()
                    region = frame[start : start + length]
                    try:
                        tokens = TokenBytes.from_tokens(msgpack.unpackb(region, raw=False, use_list=True))
                    except ValueError:
                        return None  # the normal path reports the bad token
                    self.misses += 1
                if sample is not None:
                    self._remember(sample, frame[start : start + length] if region is None else region, tokens)
            out["token_ids"] = tokens
            rest = start + length
            tail = _unpacker(memoryview(frame)[rest:])
            for _ in range(count - len(out)):
                name = tail.unpack()
                if not isinstance(name, str) or name in out:
                    return None
                out[name] = tail.unpack()
            if tail.tell() != len(frame) - rest:
                return None
            return out
        except Exception:
            return None

    def _recent(self, frame: bytes, start: int, sample: tuple[bytes, ...]) -> tuple[TokenBytes, int] | None:
        with self._lock:
            entry = self._cache.get(sample)
            if entry is None:
                return None
            region, tokens = entry
            # The whole stored array, compared in place (memcmp): a sample match alone is
            # never trusted.
            if not frame.startswith(region, start):
                return None
            self._cache.move_to_end(sample)
            self.hits += 1
            return tokens, len(region)

    def _remember(self, sample: tuple[bytes, ...], region: bytes, tokens: TokenBytes) -> None:
        with self._lock:
            self._cache[sample] = (region, tokens)
            self._cache.move_to_end(sample)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)


# Sampled bytes that pick the candidate array: its head (header and first tokens), a slice from
# its middle and one near its end. Every element takes at least one byte, so an array of n
# elements spans at least header + n bytes: the samples stay inside it whatever the widths.
_HEAD_SAMPLE = 32
_INNER_SAMPLE = 16
_MIN_SAMPLED_ELEMENTS = 4 * _INNER_SAMPLE


def _sample(frame: bytes, start: int) -> tuple[bytes, ...] | None:
    """Sampled bytes of the array at `frame[start]`; None for arrays too short to sample."""
    found = _array_header(frame, start)
    if found is None:
        return None
    n, header = found
    if n < _MIN_SAMPLED_ELEMENTS or start + header + n > len(frame):
        return None
    body = start + header
    mid, end = body + n // 2, body + n
    return (
        frame[start : start + _HEAD_SAMPLE],
        frame[mid : mid + _INNER_SAMPLE],
        frame[end - _INNER_SAMPLE : end],
    )
