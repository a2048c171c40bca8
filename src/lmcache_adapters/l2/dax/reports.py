"""What the status routes show of one dax device (the caller holds the slot index's lock)."""

from __future__ import annotations

from typing import Any

from lmcache_adapters.l2.dax.device import FAILED, REMOVED, Device
from lmcache_adapters.l2.dax.index import SlotIndex

__all__ = ["device_report_locked", "device_reconfigure_locked"]


def device_report_locked(index: SlotIndex, dev: Device) -> dict[str, Any]:
    """One entry of `devices` in the adapter's status report."""
    report: dict[str, Any] = {
        "path": dev.path,
        "state": dev.state,
        "size": dev.size,
        "slots_total": dev.slots_total if dev.state != REMOVED else 0,
        "slots_used": dev.used,
        "device_type": "devdax" if dev.is_dax else "file",
        "locked_key_count": index.locked_count_locked(dev),
    }
    if dev.error:
        report["error"] = dev.error
    return report


def device_reconfigure_locked(index: SlotIndex, dev: Device) -> dict[str, Any]:
    """One device as `GET /reconfigure/dax/status` and the operations' results show it."""
    return {
        "device_path": dev.path,
        "state": dev.state,
        "is_healthy": dev.state != FAILED,
        "size_bytes": dev.size,
        "slot_bytes": index.slot_bytes,
        "slots_total": dev.slots_total if dev.state != REMOVED else 0,
        "slots_used": dev.used,
        "slots_free": len(dev.free),
        "locked_key_count": index.locked_count_locked(dev),
        "device_type": "devdax" if dev.is_dax else "file",
        "alignment": dev.align if dev.is_dax else None,
    }
