"""Moving bytes in and out of slots: write an object, read and verify one, copy one between
slots. No bookkeeping: the caller reserves the slots and handles a device that fails."""

from __future__ import annotations

from typing import Final

import numpy as np

from lmcache_adapters.l2.dax.device import Device, persist
from lmcache_adapters.l2.dax.layout import RECORD_BYTES, SLOT_OVERHEAD, encode_record
from lmcache_adapters.l2.integrity import HEADER_SIZE, IntegrityError, decode_header, verify

__all__ = ["DEVICE_ERRORS", "copy", "copy_slot", "read_slot", "write_slot"]

# What a write into a device that went away (or was unmapped under us) raises.
DEVICE_ERRORS: Final = (OSError, ValueError, BufferError, AssertionError)


def copy(dst: memoryview, src: memoryview) -> None:
    """Copy `src` into `dst` (same length)."""
    # numpy releases the GIL for large copies, so loads on several workers overlap.
    if not src.nbytes:
        return
    np.copyto(np.frombuffer(dst, dtype=np.uint8), np.frombuffer(src, dtype=np.uint8))


def write_slot(dev: Device, slot: int, name: bytes, seq: int, header: bytes, src: memoryview) -> None:
    """Write payload, integrity header, then the record (last: the slot becomes valid only
    then). Raises one of DEVICE_ERRORS when the device cannot be written."""
    base = dev.slot_offset(slot)
    assert dev.mm is not None
    with memoryview(dev.mm) as mv:
        copy(mv[base + SLOT_OVERHEAD : base + SLOT_OVERHEAD + src.nbytes], src)
        mv[base + RECORD_BYTES : base + SLOT_OVERHEAD] = header
        persist(dev, base + RECORD_BYTES, HEADER_SIZE + src.nbytes)
        record = encode_record(name, seq, src.nbytes)
        mv[base : base + len(record)] = record
        persist(dev, base, len(record))


def read_slot(dev: Device, slot: int, length: int, dst: memoryview) -> None:
    """Copy the `length`-byte payload of `slot` into `dst` and verify it (IntegrityError)."""
    base = dev.slot_offset(slot)
    assert dev.mm is not None
    with memoryview(dev.mm) as mv:
        header = decode_header(mv[base + RECORD_BYTES : base + SLOT_OVERHEAD])
        if header.payload_length != length:
            raise IntegrityError("header length differs from the slot directory")
        copy(dst, mv[base + SLOT_OVERHEAD : base + SLOT_OVERHEAD + length])
    verify(header, dst)


def copy_slot(source: Device, sslot: int, dest: Device, dslot: int, name: bytes, seq: int, length: int) -> None:
    """Copy an object from one slot to another and give it a new record with `seq`.

    What landed on the destination is verified before the record is written, so a corrupt
    source is dropped (IntegrityError), not spread; a write failure raises one of DEVICE_ERRORS."""
    sbase, dbase = source.slot_offset(sslot), dest.slot_offset(dslot)
    assert source.mm is not None and dest.mm is not None
    with memoryview(source.mm) as smv, memoryview(dest.mm) as dmv:
        header = decode_header(smv[sbase + RECORD_BYTES : sbase + SLOT_OVERHEAD])
        if header.payload_length != length:
            raise IntegrityError("header length differs from the slot directory")
        span = HEADER_SIZE + length
        copy(dmv[dbase + RECORD_BYTES : dbase + RECORD_BYTES + span], smv[sbase + RECORD_BYTES : sbase + RECORD_BYTES + span])
        verify(header, dmv[dbase + SLOT_OVERHEAD : dbase + SLOT_OVERHEAD + length])
        persist(dest, dbase + RECORD_BYTES, span)
        record = encode_record(name, seq, length)
        dmv[dbase : dbase + len(record)] = record
        persist(dest, dbase, len(record))
