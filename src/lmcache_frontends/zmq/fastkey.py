"""Key-frame decoding that skips re-decoding a token array seen recently (engines resend it)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import msgpack

from lmcache_core.hashing import TokenBytes

__all__ = ["KeyFrameDecoder"]

DEFAULT_MAX_ENTRIES = 64
# Arrays shorter than this decode faster than they hash: not worth caching.
_MIN_CACHED_BYTES = 4096


class KeyFrameDecoder:
    """Decodes `IPCCacheServerKey` maps; the msgpack bytes of a recently seen `token_ids`
    array map straight to its `TokenBytes`, so the C decoder does not build one Python int per
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

    def decode(self, frame: bytes) -> dict[str, Any] | None:
        """The key map with `token_ids` as TokenBytes, or None (use the normal decoder)."""
        if not self._max or len(frame) < _MIN_CACHED_BYTES:
            return None
        try:
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, use_list=True)
            unpacker.feed(frame)
            out: dict[str, Any] = {}
            for _ in range(unpacker.read_map_header()):
                name = unpacker.unpack()
                if name != "token_ids":
                    out[name] = unpacker.unpack()
                    continue
                start = unpacker.tell()
                if not 0x90 <= frame[start] <= 0x9F and frame[start] not in (0xDC, 0xDD):
                    return None
                unpacker.skip()
                out[name] = self._tokens(frame[start : unpacker.tell()])
            if unpacker.tell() != len(frame) or not isinstance(out.get("token_ids"), TokenBytes):
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
