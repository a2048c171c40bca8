"""Integrity framing: a header round-trips, and every kind of damage is detected."""

from __future__ import annotations

import struct

import pytest

from lmcache_adapters.l2.integrity import (
    HEADER_SIZE,
    IntegrityError,
    decode_header,
    encode_header,
    frame,
    unframe,
    verify,
)

PAYLOAD = bytes(range(256)) * 40


def test_header_round_trip() -> None:
    raw = encode_header(PAYLOAD, flags=3)
    assert len(raw) == HEADER_SIZE == 32
    header = decode_header(raw)
    assert header.payload_length == len(PAYLOAD) and header.flags == 3
    verify(header, PAYLOAD)
    assert bytes(unframe(frame(PAYLOAD))) == PAYLOAD


def test_empty_payload_round_trips() -> None:
    assert bytes(unframe(frame(b""))) == b""


def _flip(blob: bytes, index: int) -> bytes:
    out = bytearray(blob)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: _flip(b, HEADER_SIZE + 1000), "payload checksum"),  # bit flip in the payload
        (lambda b: b[:-1], "payload is"),  # torn write: truncated payload
        (lambda b: b + b"\x00", "payload is"),  # trailing garbage
        (lambda b: b[: HEADER_SIZE - 1], "shorter than"),  # torn header
        (lambda b: b"XXXX" + b[4:], "bad magic"),
        (lambda b: b[:4] + struct.pack(">H", 99) + b[6:], "version"),
        (lambda b: _flip(b, 9), "header checksum"),  # length field damaged
        (lambda b: _flip(b, 20), "header checksum"),  # stored checksum damaged
        (lambda b: _flip(b, HEADER_SIZE - 1), "header checksum"),  # header digest damaged
        (lambda b: b"\x00" * len(b), "bad magic"),  # zero-filled block (crash before data hit disk)
    ],
    ids=[
        "payload-bit-flip",
        "truncated",
        "trailing-bytes",
        "torn-header",
        "magic",
        "version",
        "length-field",
        "checksum-field",
        "header-digest",
        "zero-filled",
    ],
)
def test_every_corruption_kind_is_detected(damage, message: str) -> None:  # type: ignore[no-untyped-def]
    blob = damage(frame(PAYLOAD))
    with pytest.raises(IntegrityError, match=message):
        unframe(blob)


def test_payload_swapped_for_another_of_the_same_length_is_detected() -> None:
    header = decode_header(encode_header(PAYLOAD))
    with pytest.raises(IntegrityError, match="checksum"):
        verify(header, PAYLOAD[::-1])
