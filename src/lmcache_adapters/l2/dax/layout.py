"""The dax on-device layout: the superblock and slot-record codecs (bytes in, bytes out; no I/O).

    offset 0:               superblock (SUPERBLOCK_BYTES): magic, version, record size, slot size
    offset SUPERBLOCK_BYTES: slot 0, slot 1, ... each `slot_bytes` long:
        [slot record (RECORD_BYTES): magic, name length, sequence, payload length, checksum, key name]
        [integrity header (HEADER_SIZE)] [payload]

The record is the slot directory entry: written last on store, cleared first on free, so a crash
mid-write leaves a free slot, never a torn object that looks valid.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from lmcache_adapters.l2.integrity import HEADER_SIZE

__all__ = [
    "EMPTY_RECORD",
    "MAX_NAME_BYTES",
    "MIN_SLOT_BYTES",
    "RECORD_BYTES",
    "RECORD_FIXED",
    "RECORD_MAGIC",
    "SLOT_OVERHEAD",
    "SUPERBLOCK_BYTES",
    "SUPERBLOCK_USED",
    "Superblock",
    "decode_record",
    "decode_superblock",
    "encode_record",
    "encode_superblock",
    "is_foreign",
    "slot_offset",
    "slots_in",
]

SUPERBLOCK_BYTES = 4096
RECORD_BYTES = 512
_SUPER = struct.Struct(">8sIIQ")  # magic, version, record bytes, slot bytes
_SUPER_MAGIC = b"LMCDAX\x00\x01"
_SUPER_VERSION = 1
SUPERBLOCK_USED = _SUPER.size + 8  # + xxh3-64 over the fixed fields
_RECORD = struct.Struct(">4sHHQQ")  # magic, version, name length, sequence, payload length
RECORD_MAGIC = b"LMCS"
_RECORD_VERSION = 1
RECORD_FIXED = _RECORD.size + 8  # + xxh3-64 over the fixed fields and the name
EMPTY_RECORD = bytes(RECORD_FIXED)  # what a free slot's record reads as
MAX_NAME_BYTES = RECORD_BYTES - RECORD_FIXED
SLOT_OVERHEAD = RECORD_BYTES + HEADER_SIZE
MIN_SLOT_BYTES = 4096


def slot_offset(slot: int, slot_bytes: int) -> int:
    """Byte offset of `slot` on a device formatted with `slot_bytes`."""
    return SUPERBLOCK_BYTES + slot * slot_bytes


def slots_in(size: int, slot_bytes: int) -> int:
    """How many whole slots a device of `size` bytes holds after its superblock."""
    return (size - SUPERBLOCK_BYTES) // slot_bytes if size > SUPERBLOCK_BYTES else 0


def encode_record(name: bytes, seq: int, length: int) -> bytes:
    """The slot record of an object stored under storage name `name`."""
    fixed = _RECORD.pack(RECORD_MAGIC, _RECORD_VERSION, len(name), seq, length)
    return fixed + struct.pack(">Q", xxhash.xxh3_64_intdigest(fixed + name)) + name


def decode_record(raw: bytes) -> tuple[str, int, int] | None:
    """(storage name, seq, payload length) of a valid record, else None."""
    if raw[:4] != RECORD_MAGIC:
        return None
    magic, version, name_len, seq, length = _RECORD.unpack_from(raw, 0)
    if version != _RECORD_VERSION or name_len > MAX_NAME_BYTES:
        return None
    (digest,) = struct.unpack_from(">Q", raw, _RECORD.size)
    name = raw[RECORD_FIXED : RECORD_FIXED + name_len]
    if xxhash.xxh3_64_intdigest(raw[: _RECORD.size] + name) != digest:
        return None
    try:
        return name.decode("utf-8"), seq, length
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class Superblock:
    """A decoded superblock: the layout a device was formatted with."""

    version: int
    record_bytes: int
    slot_bytes: int

    @property
    def supported(self) -> bool:
        """Whether this code reads the layout (the slot size is checked by the caller)."""
        return self.version == _SUPER_VERSION and self.record_bytes == RECORD_BYTES


def encode_superblock(slot_bytes: int) -> bytes:
    """The SUPERBLOCK_USED bytes that format a device for `slot_bytes` slots."""
    fixed = _SUPER.pack(_SUPER_MAGIC, _SUPER_VERSION, RECORD_BYTES, slot_bytes)
    return fixed + struct.pack(">Q", xxhash.xxh3_64_intdigest(fixed))


def decode_superblock(raw: bytes) -> Superblock | None:
    """The superblock in the first SUPERBLOCK_USED bytes, or None for a device not (validly) formatted."""
    magic, version, record_bytes, slot_bytes = _SUPER.unpack_from(raw, 0)
    (digest,) = struct.unpack_from(">Q", raw, _SUPER.size)
    if magic != _SUPER_MAGIC or xxhash.xxh3_64_intdigest(raw[: _SUPER.size]) != digest:
        return None
    return Superblock(version, record_bytes, slot_bytes)


def is_foreign(head: bytes) -> bool:
    """Whether a file's first bytes hold something other than nothing or a dax superblock."""
    head = head[: _SUPER.size]
    return head[:8] != _SUPER_MAGIC and bool(head.strip(b"\x00"))
