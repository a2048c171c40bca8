"""Chunk hashing: token ids cut into fixed-size chunks, each hashed in a chain over its prefix."""

from __future__ import annotations

import array
import hashlib
import os
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import xxhash
from blake3 import blake3

from lmcache_core.errors import ConfigError

__all__ = [
    "ACCEPTED_ALGORITHMS",
    "DEFAULT_CHUNK_SIZE",
    "NONE_HASH",
    "IncrementalHasher",
    "TokenBytes",
    "TokenHasher",
    "none_hash_for",
]

DEFAULT_CHUNK_SIZE = 256
ACCEPTED_ALGORITHMS: tuple[str, ...] = ("blake3", "xxh3", "sha256", "builtin")

# LMCache 0.5.0 seeds the chain with the hash of an 8-byte zero int and a uint32 zero: 12 zero bytes.
_NONE_INPUT = (0).to_bytes(8, "big", signed=True) + struct.pack(">I", 0)
NONE_HASH: bytes = blake3(_NONE_INPUT).digest()
"""`h_{-1}` of the default blake3 chain (7e3eff9e…473b)."""

_TOKEN_LIMIT = 1 << 32
_TOKEN_BYTES = 4

# The stdlib array of 4-byte unsigned ints converts a Python list three times faster than numpy.
_U32_TYPECODE = next(code for code in ("I", "L") if array.array(code).itemsize == _TOKEN_BYTES)
_SWAP_TO_BIG = sys.byteorder == "little"

_Buffer = bytes | bytearray | memoryview


def _builtin_none() -> bytes:
    # A tuple of ints hashes the same under every PYTHONHASHSEED, so this is a stable constant.
    return hash((0, ())).to_bytes(8, "big", signed=True)


def none_hash_for(algorithm: str) -> bytes:
    """The chain seed (`h_{-1}`) of `algorithm`; ConfigError for an unknown algorithm."""
    if algorithm == "blake3":
        return NONE_HASH
    if algorithm == "xxh3":
        return xxhash.xxh3_128_digest(_NONE_INPUT)
    if algorithm == "sha256":
        return hashlib.sha256(_NONE_INPUT).digest()
    if algorithm == "builtin":
        return _builtin_none()
    raise ConfigError(
        f"unknown hash algorithm {algorithm!r} (accepted: {', '.join(ACCEPTED_ALGORITHMS)})"
    )


def _require_fixed_hash_seed() -> None:
    seed = os.environ.get("PYTHONHASHSEED")
    if seed is None:
        raise ConfigError(
            "hash algorithm 'builtin' needs PYTHONHASHSEED set to a fixed integer "
            "(it is unset, so hashes would differ between processes)"
        )
    try:
        value = int(seed)
    except ValueError:
        value = -1
    if not 0 <= value <= 4294967295:
        raise ConfigError(
            f"hash algorithm 'builtin' needs PYTHONHASHSEED set to an integer in 0..4294967295, got {seed!r}"
        )


def _chain_digest(digest: Callable[[bytes], bytes], data: _Buffer, prev: bytes, chunk_bytes: int) -> list[bytes]:
    # The hot loop: one C call per chunk; `prev + slice` is a ~1 KiB copy, cheaper than an
    # incremental hasher's extra method calls.
    out: list[bytes] = []
    append = out.append
    h = prev
    # Released on exit so a caller's bytearray can be resized again right after.
    with memoryview(data) as raw, raw.cast("B") as view:
        for start in range(0, len(view) - chunk_bytes + 1, chunk_bytes):
            h = digest(h + view[start : start + chunk_bytes])
            append(h)
    return out


def _blake3_digest(data: bytes) -> bytes:
    return blake3(data).digest()


def _sha256_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _chain_builtin(data: _Buffer, prev: bytes, chunk_bytes: int) -> list[bytes]:
    fmt = struct.Struct(f">{chunk_bytes // _TOKEN_BYTES}I")
    out: list[bytes] = []
    h = int.from_bytes(prev, "big", signed=True)
    for start in range(0, len(data) - chunk_bytes + 1, chunk_bytes):
        h = hash((h, fmt.unpack_from(data, start)))
        out.append(h.to_bytes(8, "big", signed=True))
    return out


def _bad_token_message(values: Iterable[Any]) -> str:
    # Only reached after a fast conversion failed; a Python scan is fine on the error path.
    for index, value in enumerate(values):
        if not (isinstance(value, int | np.integer) and 0 <= value < _TOKEN_LIMIT):
            return f"token id {value!r} at position {index} is not an integer in [0, 2^32)"
    return "token ids must be integers in [0, 2^32)"


class TokenBytes(bytes):
    """Token ids already validated and encoded as `token_bytes` returns them (big-endian uint32).

    `token_bytes` passes these through without a copy, so a decoder that caches them saves the
    conversion, and their (cached) hash lets sessions recognise a sequence seen before."""

    __slots__ = ()

    def __new__(cls, data: bytes | bytearray | memoryview = b"") -> TokenBytes:
        obj = super().__new__(cls, data)
        if len(obj) % _TOKEN_BYTES:
            raise ValueError(f"token bytes must be a multiple of {_TOKEN_BYTES} long, got {len(obj)}")
        return obj

    @classmethod
    def from_tokens(cls, tokens: Any) -> TokenBytes:
        """Validate and encode `tokens` (anything `token_bytes` accepts)."""
        return cls(token_bytes(tokens))


def token_bytes(tokens: Any) -> bytes:
    """Validate token ids and return them as big-endian uint32 bytes (4 bytes per token).

    Accepts a list/tuple/iterable of ints, a numpy array of any integer dtype, or anything
    numpy can view (`__array__` or `.numpy()`), e.g. a torch tensor, or TokenBytes (returned
    as is). Raises ValueError for anything else, naming the first value outside [0, 2^32) where
    there is one."""
    if isinstance(tokens, TokenBytes):
        return tokens
    if isinstance(tokens, np.ndarray):
        return _ndarray_bytes(tokens)
    if isinstance(tokens, list | tuple | range | array.array):
        return _sequence_bytes(tokens)
    if hasattr(tokens, "__array__") or hasattr(tokens, "numpy"):
        return _ndarray_bytes(_as_ndarray(tokens))
    if isinstance(tokens, str | bytes | bytearray | memoryview | dict) or not isinstance(tokens, Iterable):
        raise ValueError(f"token ids must be a sequence of integers, got {type(tokens).__name__}")
    return _sequence_bytes(list(tokens))


def _as_ndarray(tokens: Any) -> np.ndarray[Any, Any]:
    # Duck-typed so the core never imports torch: a CPU tensor has __array__, any tensor .cpu().
    try:
        if hasattr(tokens, "__array__"):
            return np.asarray(tokens)
        return np.asarray(tokens.numpy())
    except (TypeError, RuntimeError) as exc:
        to_host = getattr(tokens, "cpu", None)
        if to_host is None:
            raise ValueError(f"cannot read token ids from {type(tokens).__name__}: {exc}") from None
        return np.asarray(to_host())


def _sequence_bytes(tokens: Any) -> bytes:
    try:
        arr = array.array(_U32_TYPECODE, tokens)
    except (OverflowError, TypeError):
        raise ValueError(_bad_token_message(tokens)) from None
    if _SWAP_TO_BIG:
        arr.byteswap()
    return arr.tobytes()


def _ndarray_bytes(arr: np.ndarray[Any, Any]) -> bytes:
    if arr.dtype.kind not in "iu":
        raise ValueError(f"token ids must have an integer dtype, got {arr.dtype}")
    if arr.ndim != 1:
        if arr.size or arr.ndim == 0:
            raise ValueError(f"token ids must be one-dimensional, got shape {arr.shape}")
        arr = arr.reshape(0)
    if arr.size and not (arr.dtype.kind == "u" and arr.dtype.itemsize <= _TOKEN_BYTES):
        # Vectorised range check: astype would wrap out-of-range values silently.
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= _TOKEN_LIMIT:
            bad = lo if lo < 0 else hi
            index = int(np.argmax(arr == bad))
            raise ValueError(f"token id {bad} at position {index} is not an integer in [0, 2^32)")
    return arr.astype(">u4", copy=False).tobytes()


def _first_difference(a: _Buffer, b: _Buffer, n: int) -> int:
    """Index of the first differing byte among the first `n` of `a` and `b` (n when equal)."""
    diff = np.flatnonzero(np.frombuffer(a, np.uint8, n) != np.frombuffer(b, np.uint8, n))
    return int(diff[0]) if diff.size else n


class TokenHasher:
    """Chained chunk hashes of token sequences (LMCache 0.5.0's blake3 chain by default).

    `h_i = H(h_{i-1} || tokens of chunk i as big-endian uint32)` with `h_{-1}` the algorithm's
    NONE hash; only full chunks are hashed. Stateless after construction, so thread-safe."""

    def __init__(self, algorithm: str = "blake3", chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if algorithm not in ACCEPTED_ALGORITHMS:
            raise ConfigError(
                f"unknown hash algorithm {algorithm!r} (accepted: {', '.join(ACCEPTED_ALGORITHMS)})"
            )
        if algorithm == "builtin":
            _require_fixed_hash_seed()
        self._algorithm = algorithm
        self._chunk_size = chunk_size
        self._chunk_bytes = chunk_size * _TOKEN_BYTES
        self._none_hash = none_hash_for(algorithm)
        digest: Callable[[bytes], bytes] | None = {
            "blake3": _blake3_digest,
            "xxh3": xxhash.xxh3_128_digest,
            "sha256": _sha256_digest,
        }.get(algorithm)
        self._digest = digest

    @property
    def hash_algorithm_name(self) -> str:
        """The algorithm's name as configured (`blake3`, `xxh3`, `sha256`, `builtin`)."""
        return self._algorithm

    @property
    def chunk_size(self) -> int:
        """Tokens per chunk."""
        return self._chunk_size

    @property
    def digest_size(self) -> int:
        """Bytes per chunk hash (32 for blake3/sha256, 16 for xxh3, 8 for builtin)."""
        return len(self._none_hash)

    @property
    def none_hash(self) -> bytes:
        """The chain seed `h_{-1}` (for blake3: NONE_HASH)."""
        return self._none_hash

    def chunk_hashes(self, tokens: Any, prev: bytes | None = None) -> list[bytes]:
        """Hashes of every full chunk of `tokens`, chained from `prev` (None = the NONE hash).

        `tokens` starts at a chunk boundary; a trailing partial chunk is ignored. Raises
        ValueError for a token id outside [0, 2^32) or a `prev` of the wrong size."""
        return self.hash_token_bytes(token_bytes(tokens), prev)

    def hash_token_bytes(self, data: _Buffer, prev: bytes | None = None) -> list[bytes]:
        """Like `chunk_hashes` for tokens already encoded by `token_bytes` (big-endian uint32)."""
        if prev is None:
            prev = self._none_hash
        elif not isinstance(prev, bytes) or len(prev) != len(self._none_hash):
            raise ValueError(
                f"prev must be a {len(self._none_hash)}-byte {self._algorithm} chunk hash, got {prev!r:.80}"
            )
        if self._digest is None:
            return _chain_builtin(data, prev, self._chunk_bytes)
        return _chain_digest(self._digest, data, prev, self._chunk_bytes)

    def incremental(self) -> IncrementalHasher:
        """A new, empty IncrementalHasher using this hasher."""
        return IncrementalHasher(self)

    def __repr__(self) -> str:
        return f"TokenHasher({self._algorithm!r}, chunk_size={self._chunk_size})"


class IncrementalHasher:
    """The hash chain of one growing token sequence (a session): each full chunk is hashed once.

    Not thread-safe; the owner (a session) serialises calls."""

    def __init__(self, hasher: TokenHasher) -> None:
        self._hasher = hasher
        self._chunk_bytes = hasher.chunk_size * _TOKEN_BYTES
        self._buf = bytearray()  # every token seen so far, big-endian uint32
        self._hashes: list[bytes] = []

    @property
    def hasher(self) -> TokenHasher:
        return self._hasher

    @property
    def num_tokens(self) -> int:
        """Tokens seen so far (including a trailing partial chunk)."""
        return len(self._buf) // _TOKEN_BYTES

    @property
    def hashes(self) -> list[bytes]:
        """Hashes of every full chunk seen so far (a copy)."""
        return list(self._hashes)

    def tokens(self) -> np.ndarray[Any, np.dtype[np.uint32]]:
        """The tokens seen so far, as a native-endian uint32 array (a copy)."""
        return np.frombuffer(bytes(self._buf), dtype=">u4").astype(np.uint32)

    def extend(self, tokens: Any) -> list[bytes]:
        """Append `tokens`; return the hashes of the chunks this call completed (maybe none)."""
        data = token_bytes(tokens)
        self._buf += data
        return self._hash_pending()

    def update_to(self, all_tokens: Any) -> list[bytes]:
        """Make the sequence equal `all_tokens` (the whole sequence from token 0, as engines send
        it) and return all its chunk hashes.

        When `all_tokens` extends what was seen, only the new chunks are hashed. When it diverges
        (or is shorter), the chain is cut back to the last chunk before the first difference and
        rehashed from there, so the result always equals a one-shot `chunk_hashes`."""
        data = token_bytes(all_tokens)
        seen = len(self._buf)
        if data.startswith(self._buf):
            self._buf += data[seen:]
        else:
            first_byte = _first_difference(self._buf, data, min(seen, len(data)))
            keep_chunks = first_byte // self._chunk_bytes
            del self._hashes[keep_chunks:]
            keep_bytes = keep_chunks * self._chunk_bytes
            del self._buf[keep_bytes:]
            self._buf += data[keep_bytes:]
        self._hash_pending()
        return list(self._hashes)

    def adopt(self, data: TokenBytes, hashes: Sequence[bytes]) -> None:
        """Become the sequence `data` whose full-chunk hashes (from this hasher's algorithm,
        e.g. remembered from another session) are `hashes`, without hashing again."""
        if len(hashes) != len(data) // self._chunk_bytes:
            raise ValueError(f"{len(hashes)} hashes for {len(data) // self._chunk_bytes} full chunks")
        self._buf = bytearray(data)
        self._hashes = list(hashes)

    def reset(self) -> None:
        """Forget every token and hash."""
        self._buf = bytearray()
        self._hashes = []

    def _hash_pending(self) -> list[bytes]:
        start = len(self._hashes) * self._chunk_bytes
        end = len(self._buf) - (len(self._buf) - start) % self._chunk_bytes
        if end <= start:
            return []
        prev = self._hashes[-1] if self._hashes else None
        new = self._hasher.hash_token_bytes(self._buf[start:end], prev)
        self._hashes.extend(new)
        return new
