"""The `dax` L2 adapter: fixed-size slots in mmap'ed Device-DAX devices (or regular files), reconfigurable at run time.

One job per module:

    layout.py       the on-device superblock and slot-record codecs
    device.py       one mapped device: states, open / format / remap / close
    index.py        the slot index: which key is in which slot, placement, pins, rebuild
    slot_io.py      bytes in and out of slots (write, read and verify, copy)
    reconfigure.py  the add / remove / resize / migrate state machine
    requests.py     reconfiguration bodies parsed into typed requests
    reports.py      what the status routes show of a device
    config.py       the kind's config fields and the device list
    sizes.py        "100GiB" and friends
    backend.py      DaxBackend: the StorageBackend port, composed of the above
    adapter.py      DaxL2Adapter (the backend behind the standard stack) and the factory
"""

from __future__ import annotations

from lmcache_adapters.l2.dax.adapter import DaxL2Adapter, create_dax_adapter
from lmcache_adapters.l2.dax.backend import DaxBackend
from lmcache_adapters.l2.dax.config import DAX_FIELDS, DaxDeviceConfig
from lmcache_adapters.l2.dax.device import DEVICE_STATES
from lmcache_adapters.l2.dax.layout import (
    MAX_NAME_BYTES,
    RECORD_BYTES,
    SLOT_OVERHEAD,
    SUPERBLOCK_BYTES,
)
from lmcache_adapters.l2.dax.requests import UnsupportedOperationError
from lmcache_adapters.l2.dax.sizes import InvalidSizeError, parse_size
from lmcache_adapters.memory.devices import dax_geometry

__all__ = [
    "DAX_FIELDS",
    "DEVICE_STATES",
    "MAX_NAME_BYTES",
    "RECORD_BYTES",
    "SLOT_OVERHEAD",
    "SUPERBLOCK_BYTES",
    "DaxBackend",
    "DaxDeviceConfig",
    "DaxL2Adapter",
    "InvalidSizeError",
    "UnsupportedOperationError",
    "create_dax_adapter",
    "dax_geometry",
    "parse_size",
]
