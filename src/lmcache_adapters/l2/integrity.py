"""Integrity framing for persisted L2 objects: a fixed header with length and xxh3-64 checksum.

Every object written by the fs, s3 and dax adapters is `header || payload`. On load the header is
checked (magic, version, length) and the checksum recomputed: any mismatch means the object is
torn or corrupt: the backend deletes the object and raises IntegrityError (a CorruptObjectError),
which the standard L2 stack counts and turns into a miss — never a hit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import xxhash

from lmcache_core.errors import CorruptObjectError

MAGIC = b"LMC2"
VERSION = 1
# magic(4) | version(u16) | flags(u16) | payload length(u64) | xxh3-64 of payload(u64) | xxh3-64 of the 24 bytes before (u64)
_HEADER = struct.Struct(">4sHHQQQ")
HEADER_SIZE = _HEADER.size  # 32


class IntegrityError(CorruptObjectError, ValueError):
    """A stored object failed verification (bad header, wrong length, checksum mismatch)."""


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded object header."""

    payload_length: int
    checksum: int
    flags: int = 0


def checksum(payload: bytes | bytearray | memoryview) -> int:
    """xxh3-64 of the payload (several GB/s; catches torn writes and bit flips)."""
    return xxhash.xxh3_64_intdigest(payload)


def encode_header(payload: bytes | bytearray | memoryview, flags: int = 0) -> bytes:
    """The 32-byte header for `payload`."""
    length = memoryview(payload).nbytes
    head = struct.pack(">4sHHQQ", MAGIC, VERSION, flags, length, checksum(payload))
    return head + struct.pack(">Q", xxhash.xxh3_64_intdigest(head))


def decode_header(raw: bytes | bytearray | memoryview) -> Header:
    """Parse and self-check a header; raise IntegrityError when it is not one of ours."""
    if memoryview(raw).nbytes < HEADER_SIZE:
        raise IntegrityError(f"object shorter than its {HEADER_SIZE}-byte header")
    magic, version, flags, length, digest, head_digest = _HEADER.unpack_from(raw, 0)
    if magic != MAGIC:
        raise IntegrityError("bad magic: not an lmcache object")
    if version != VERSION:
        raise IntegrityError(f"unsupported object format version {version}")
    if xxhash.xxh3_64_intdigest(bytes(memoryview(raw)[: HEADER_SIZE - 8])) != head_digest:
        raise IntegrityError("header checksum mismatch")
    return Header(payload_length=length, checksum=digest, flags=flags)


def verify(header: Header, payload: bytes | bytearray | memoryview) -> None:
    """Raise IntegrityError unless `payload` is exactly what `header` describes."""
    size = memoryview(payload).nbytes
    if size != header.payload_length:
        raise IntegrityError(f"payload is {size} bytes, header says {header.payload_length}")
    if checksum(payload) != header.checksum:
        raise IntegrityError("payload checksum mismatch")


def frame(payload: bytes | bytearray | memoryview, flags: int = 0) -> bytes:
    """`header || payload` as one bytes object (for stores that want a single buffer, e.g. S3 PUT)."""
    return encode_header(payload, flags) + bytes(payload)


def unframe(blob: bytes | bytearray | memoryview) -> memoryview:
    """Verify a whole `header || payload` blob and return a view of the payload."""
    view = memoryview(blob)
    header = decode_header(view[:HEADER_SIZE])
    payload = view[HEADER_SIZE:]
    verify(header, payload)
    return payload
