"""ObjectKey: the identity of one stored KV chunk for one rank, with its JSON and storage-name forms."""

from __future__ import annotations

import re
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from lmcache_core.errors import InvalidKeyError

MAX_SALT_LEN = 128
_SALT_FORBIDDEN = ("@", "/", "\\", "\x00")
# \Z, not $: `$` also matches before a trailing newline, which int()/fromhex() would then skip.
_HEX_RE = re.compile(r"^[0-9a-f]*\Z")

# kv_rank packs four bytes: world_size | global_rank | local_world_size | local_rank.
_BYTE = 0xFF


def pack_kv_rank(world_size: int, global_rank: int, local_world_size: int, local_rank: int) -> int:
    """Pack `(ws << 24) | (rank << 16) | (local_ws << 8) | local_rank`; each part must fit a byte."""
    parts = {
        "world_size": world_size,
        "global_rank": global_rank,
        "local_world_size": local_world_size,
        "local_rank": local_rank,
    }
    for name, value in parts.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _BYTE:
            raise InvalidKeyError(f"{name} must be an integer in 0..255, got {value!r}")
    if world_size < 1 or local_world_size < 1:
        raise InvalidKeyError("world_size and local_world_size must be at least 1")
    if global_rank >= world_size:
        raise InvalidKeyError(f"global_rank {global_rank} must be < world_size {world_size}")
    if local_rank >= local_world_size:
        raise InvalidKeyError(f"local_rank {local_rank} must be < local_world_size {local_world_size}")
    return (world_size << 24) | (global_rank << 16) | (local_world_size << 8) | local_rank


def unpack_kv_rank(kv_rank: int) -> tuple[int, int, int, int]:
    """Inverse of `pack_kv_rank`: `(world_size, global_rank, local_world_size, local_rank)`."""
    if isinstance(kv_rank, bool) or not isinstance(kv_rank, int) or not 0 <= kv_rank <= 0xFFFFFFFF:
        raise InvalidKeyError(f"kv_rank must be an unsigned 32-bit integer, got {kv_rank!r}")
    return (kv_rank >> 24) & _BYTE, (kv_rank >> 16) & _BYTE, (kv_rank >> 8) & _BYTE, kv_rank & _BYTE


def kv_rank_for(world_size: int, rank: int) -> int:
    """The kv_rank LMCache 0.5.0 uses for a single-node worker: `ws<<24 | rank<<16 | ws<<8 | rank`."""
    return pack_kv_rank(world_size, rank, world_size, rank)


def validate_cache_salt(cache_salt: str) -> str:
    """Return `cache_salt` if valid, else raise InvalidKeyError naming the problem."""
    if not isinstance(cache_salt, str):
        raise InvalidKeyError(f"cache_salt must be a string, got {type(cache_salt).__name__}")
    if len(cache_salt) > MAX_SALT_LEN:
        raise InvalidKeyError(f"cache_salt is longer than {MAX_SALT_LEN} characters")
    for ch in _SALT_FORBIDDEN:
        if ch in cache_salt:
            raise InvalidKeyError(f"cache_salt must not contain {ch!r}")
    return cache_salt


def validate_model_name(model_name: str) -> str:
    """Return `model_name` if valid (non-empty, no `@`, no NUL), else raise InvalidKeyError."""
    if not isinstance(model_name, str):
        raise InvalidKeyError(f"model_name must be a string, got {type(model_name).__name__}")
    if not model_name:
        raise InvalidKeyError("model_name must not be empty")
    if "@" in model_name:
        raise InvalidKeyError("model_name must not contain '@'")
    if "\x00" in model_name:
        raise InvalidKeyError("model_name must not contain NUL")
    return model_name


try:
    # namedtuple's C field accessor: twice as fast as property(itemgetter(i)).
    from collections import _tuplegetter  # type: ignore[attr-defined]

    def _field(index: int, doc: str) -> Any:
        return _tuplegetter(index, doc)

except ImportError:  # pragma: no cover - other Python implementations

    def _field(index: int, doc: str) -> Any:
        return property(itemgetter(index), doc=doc)


_tuple_new = tuple.__new__
_tuple_eq = tuple.__eq__
_tuple_ne = tuple.__ne__


class ObjectKey(tuple[bytes, str, int, int, str]):
    """Identity of one KV chunk for one rank. Immutable, hashable, validated on construction.

    A tuple underneath, so hashing and comparing run in C: L1's batch operations hash each key
    several times (dict, sets, LRU order) for every chunk of every request. An ObjectKey only
    ever equals another ObjectKey, never a plain tuple of the same parts."""

    __slots__ = ()

    chunk_hash: bytes = _field(0, "The chunk's hash (bytes of the hash chain).")
    model_name: str = _field(1, "The model's name.")
    kv_rank: int = _field(2, "The packed kv rank (see pack_kv_rank).")
    object_group_id: int = _field(3, "The object group (0 unless layers are split into groups).")
    cache_salt: str = _field(4, "The tenant's cache salt ('' for none).")

    def __new__(
        cls, chunk_hash: bytes, model_name: str, kv_rank: int, object_group_id: int = 0, cache_salt: str = ""
    ) -> ObjectKey:
        key = _tuple_new(cls, (chunk_hash, model_name, kv_rank, object_group_id, cache_salt))
        key._validate()
        return key

    __hash__ = tuple.__hash__

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not ObjectKey:
            # A plain tuple would otherwise compare by its items.
            return False if isinstance(other, tuple) else NotImplemented
        return _tuple_eq(self, other)

    def __ne__(self, other: object) -> bool:
        if other.__class__ is not ObjectKey:
            return True if isinstance(other, tuple) else NotImplemented
        return _tuple_ne(self, other)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (ObjectKey, tuple(self))

    @classmethod
    def trusted(cls, chunk_hash: bytes, model_name: str, kv_rank: int, cache_salt: str = "") -> ObjectKey:
        """Build a key (object group 0) from parts the caller has ALREADY validated: a non-empty
        bytes digest, `validate_model_name`/`validate_cache_salt`-checked strings and a packed
        kv_rank. For hot paths that build many keys of one request; skips validation."""
        return _tuple_new(cls, (chunk_hash, model_name, kv_rank, 0, cache_salt))

    def _validate(self) -> None:
        if not isinstance(self.chunk_hash, bytes):
            raise InvalidKeyError(f"chunk_hash must be bytes, got {type(self.chunk_hash).__name__}")
        if not self.chunk_hash:
            raise InvalidKeyError("chunk_hash must not be empty")
        validate_model_name(self.model_name)
        unpack_kv_rank(self.kv_rank)
        if isinstance(self.object_group_id, bool) or not isinstance(self.object_group_id, int):
            raise InvalidKeyError("object_group_id must be an integer")
        if self.object_group_id < 0:
            raise InvalidKeyError(f"object_group_id must be >= 0, got {self.object_group_id}")
        validate_cache_salt(self.cache_salt)

    # ------------------------------------------------------------------ JSON form

    def to_json(self) -> dict[str, Any]:
        """The `EncodedObjectKey` form used by the HTTP API."""
        return {
            "chunk_hash_hex": self.chunk_hash.hex(),
            "model_name": self.model_name,
            "kv_rank": self.kv_rank,
            "object_group_id": self.object_group_id,
            "cache_salt": self.cache_salt,
        }

    @classmethod
    def from_json(cls, obj: Any) -> ObjectKey:
        """Parse an `EncodedObjectKey`; raise InvalidKeyError naming the bad or missing field."""
        if not isinstance(obj, dict):
            raise InvalidKeyError("key must be a JSON object")
        allowed = {"chunk_hash_hex", "model_name", "kv_rank", "object_group_id", "cache_salt"}
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise InvalidKeyError(f"unknown key field(s): {', '.join(unknown)}")
        for required in ("chunk_hash_hex", "model_name", "kv_rank"):
            if required not in obj:
                raise InvalidKeyError(f"missing key field: {required}")
        hex_ = obj["chunk_hash_hex"]
        if not isinstance(hex_, str) or not hex_ or len(hex_) % 2 or not _HEX_RE.match(hex_):
            raise InvalidKeyError("chunk_hash_hex must be a non-empty even-length lowercase hex string")
        kv_rank = obj["kv_rank"]
        if isinstance(kv_rank, bool) or not isinstance(kv_rank, int):
            raise InvalidKeyError("kv_rank must be an integer")
        group = obj.get("object_group_id", 0)
        if isinstance(group, bool) or not isinstance(group, int):
            raise InvalidKeyError("object_group_id must be an integer")
        return cls(
            chunk_hash=bytes.fromhex(hex_),
            model_name=obj["model_name"],
            kv_rank=kv_rank,
            object_group_id=group,
            cache_salt=obj.get("cache_salt", ""),
        )

    # ------------------------------------------------------------------ storage-name form

    def to_storage_name(self) -> str:
        """`<model_name, '/' escaped>@<kv_rank 8 hex>@<group hex>@<hash hex>[@<salt>]`.

        `%` is escaped as `%25` and `/` as `%2F` so the name is one path component and parses back
        exactly. Salts cannot contain `@` or `/`, so they need no escaping."""
        model = self.model_name.replace("%", "%25").replace("/", "%2F")
        name = f"{model}@{self.kv_rank:08x}@{self.object_group_id:x}@{self.chunk_hash.hex()}"
        if self.cache_salt:
            name += f"@{self.cache_salt}"
        return name

    @classmethod
    def from_storage_name(cls, name: str) -> ObjectKey:
        """Parse `to_storage_name`'s output; raise InvalidKeyError for anything else."""
        if not isinstance(name, str):
            raise InvalidKeyError(f"storage name must be a string, got {type(name).__name__}")
        parts = name.split("@")
        if len(parts) not in (4, 5):
            raise InvalidKeyError(f"not a storage name: {name!r}")
        model_esc, rank_hex, group_hex, hash_hex = parts[:4]
        salt = parts[4] if len(parts) == 5 else ""
        if len(parts) == 5 and not salt:
            raise InvalidKeyError(f"empty salt segment in {name!r}")
        if len(rank_hex) != 8 or not _HEX_RE.match(rank_hex):
            raise InvalidKeyError(f"bad kv_rank segment in {name!r}")
        if not group_hex or not _HEX_RE.match(group_hex) or (len(group_hex) > 1 and group_hex[0] == "0"):
            raise InvalidKeyError(f"bad object_group_id segment in {name!r}")
        if not hash_hex or len(hash_hex) % 2 or not _HEX_RE.match(hash_hex):
            raise InvalidKeyError(f"bad chunk hash segment in {name!r}")
        if "/" in model_esc:
            raise InvalidKeyError(f"unescaped '/' in {name!r}")
        model = _unescape_model(model_esc, name)
        return cls(
            chunk_hash=bytes.fromhex(hash_hex),
            model_name=model,
            kv_rank=int(rank_hex, 16),
            object_group_id=int(group_hex, 16),
            cache_salt=salt,
        )

    def __repr__(self) -> str:
        salt = f", salt={self.cache_salt!r}" if self.cache_salt else ""
        return (
            f"ObjectKey({self.chunk_hash.hex()[:12]}…, {self.model_name!r}, "
            f"rank=0x{self.kv_rank:08x}, group={self.object_group_id}{salt})"
        )


def _unescape_model(escaped: str, name: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(escaped):
        ch = escaped[i]
        if ch == "%":
            code = escaped[i + 1 : i + 3]
            if code == "25":
                out.append("%")
            elif code == "2F":
                out.append("/")
            else:
                raise InvalidKeyError(f"bad escape in model segment of {name!r}")
            i += 3
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def request_keys(
    model_name: str, world_size: int, cache_salt: str, hashes: Sequence[bytes], rank: int | None = None
) -> list[ObjectKey]:
    """The keys of a request's chunks, chunk-major: every rank of `world_size` per chunk (or only
    `rank`). The one place the data path, ended sessions and request inspection build them.
    The caller has validated `model_name`/`cache_salt` (a RequestKey or a session did) and the
    hashes come from the hasher, so per-key validation is skipped."""
    ranks = [kv_rank_for(world_size, r) for r in range(world_size)] if rank is None else [kv_rank_for(world_size, rank)]
    trusted = ObjectKey.trusted
    return [trusted(h, model_name, kr, cache_salt) for h in hashes for kr in ranks]
