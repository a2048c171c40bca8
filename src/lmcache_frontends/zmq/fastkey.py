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
# Arrays shorter than this decode faster than they hash: not worth caching.
_MIN_CACHED_BYTES = 4096


def fixed_width_tokens(frame: bytes, start: int) -> tuple[TokenBytes, int] | None:
    """When the msgpack array at `frame[start]` holds only uint32-tagged ints (the fixed-width
    form `protocol.encode_token_array` writes), its tokens and its length in bytes, read with
    two numpy passes; None for any other array (the caller decodes it normally)."""
    tag = frame[start]
    if 0x90 <= tag <= 0x9F:
        n, header = tag & 0x0F, 1
    elif tag == 0xDC:
        n, header = int.from_bytes(frame[start + 1 : start + 3], "big"), 3
    elif tag == 0xDD:
        n, header = int.from_bytes(frame[start + 1 : start + 5], "big"), 5
    else:
        return None
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
    """Decodes `IPCCacheServerKey` maps. A fixed-width `token_ids` array (what our client sends)
    is read with numpy in one pass; otherwise the msgpack bytes of a recently seen array map
    straight to its `TokenBytes`, so the C decoder does not build one Python int per
    token again (~2 ms for 32k tokens here) and the session's hash cache can recognise it.

    A bounded LRU (`max_entries` arrays). Anything unusual (not a map, a non-array or invalid
    `token_ids`, trailing bytes) answers None and the caller decodes normally, so errors are
    exactly the normal decoder's. Thread-safe."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._max = max(0, int(max_entries))
        self._cache: OrderedDict[bytes, TokenBytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.fixed_width = 0

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
            fixed = fixed_width_tokens(frame, start)
            if fixed is not None:
                tokens, length = fixed
                self.fixed_width += 1
            else:
                if not self._max or (not 0x90 <= frame[start] <= 0x9F and frame[start] not in (0xDC, 0xDD)):
                    return None
                span = _unpacker(memoryview(frame)[start:])
                span.skip()
                length = span.tell()
                cached = self._tokens(frame[start : start + length])
                if cached is None:
                    return None
                tokens = cached
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

    def _tokens(self, region: bytes) -> TokenBytes | None:
        with self._lock:
            tokens = self._cache.get(region)
            if tokens is not None:
                self._cache.move_to_end(region)
                self.hits += 1
                return tokens
            self.misses += 1
        values = msgpack.unpackb(region, raw=False, use_list=True)
        try:
            tokens = TokenBytes.from_tokens(values)
        except ValueError:
            return None  # the normal path reports the bad token
        with self._lock:
            self._cache[region] = tokens
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return tokens

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)
