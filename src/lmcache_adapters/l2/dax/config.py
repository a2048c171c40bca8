"""The `dax` kind's configuration: its fields, the device list, a device path in a body."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmcache_adapters.l2.dax.sizes import parse_size
from lmcache_adapters.l2.stack import MAX_WORKERS_LIMIT
from lmcache_core.errors import ConfigError
from lmcache_core.plugin.registry import COMMON_FIELDS, ConfigField, config_field

__all__ = [
    "DAX_FIELDS",
    "DEFAULT_RECONFIGURE_TIMEOUT_S",
    "PLACEMENTS",
    "DaxDeviceConfig",
    "body_path",
    "check_adapter_config",
    "device_configs",
]

PLACEMENTS = ("most_free", "round_robin")
DEFAULT_RECONFIGURE_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class DaxDeviceConfig:
    """One configured device: a Device-DAX character device or a regular file standing in for one.

    `size` is the number of bytes mapped; None means the whole Device-DAX device (required for files)."""

    path: str
    size: int | None = None


def device_configs(raw: Any) -> list[DaxDeviceConfig]:
    """The `devices` field as configs; ConfigError naming the bad entry."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError("devices must be a non-empty list of {\"path\": ..., \"size\": ...} objects")
    out: list[DaxDeviceConfig] = []
    for i, item in enumerate(raw):
        if isinstance(item, DaxDeviceConfig):
            out.append(item)
            continue
        if not isinstance(item, Mapping):
            raise ConfigError(f"devices[{i}] must be an object with path and size")
        path = body_path(item, f"devices[{i}]", {"path", "device_path", "size"})
        size = item.get("size")
        out.append(DaxDeviceConfig(path, None if size is None else parse_size(size, f"devices[{i}].size")))
    return out


def body_path(body: Mapping[str, Any], where: str, allowed: set[str]) -> str:
    """The absolute device path of `body` (`device_path`, or its alias `path`), whose other
    fields must be in `allowed`."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ConfigError(f"unknown field(s) in {where}: {', '.join(unknown)} (accepted: {', '.join(sorted(allowed))})")
    if "path" in body and "device_path" in body:
        raise ConfigError(f"{where}: give device_path or path, not both")
    name = "device_path" if "device_path" in body else "path"
    value = body.get(name)
    if value is None:
        raise ConfigError(f"{where} requires field 'device_path'")
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ConfigError(f"{where}: {name} must be a non-empty path string")
    return os.path.abspath(value.strip())


DAX_FIELDS: Mapping[str, ConfigField] = {
    "devices": config_field(
        list,
        required=True,
        help='devices to map: [{"path": "/dev/dax0.0" or a file, "size": bytes or "100GiB"}] (size optional for /dev/dax)',
    ),
    "slot_bytes": config_field(int, str, required=True, help='fixed slot size, bytes or "4MiB"; objects up to slot_bytes - 544 fit'),
    "max_workers": config_field(int, help=f"I/O threads, 1..{MAX_WORKERS_LIMIT} (default 4)"),
    "placement": config_field(str, help="where new objects go: most_free (default) or round_robin"),
    "preallocate": config_field(bool, help="reserve a file's blocks up front (default true; false keeps test files sparse)"),
}


def check_adapter_config(config: Mapping[str, Any]) -> None:
    """The `--l2-adapter` JSON of kind `dax` (without `type`): no unknown field, the required
    ones present, each of its declared type."""
    allowed = {**COMMON_FIELDS, **DAX_FIELDS}
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown field(s) for L2 adapter 'dax': {', '.join(unknown)} (accepted: {', '.join(sorted(DAX_FIELDS))})")
    for field_name, spec in DAX_FIELDS.items():
        value = config.get(field_name)
        if value is None:
            if spec.required:
                raise ConfigError(f"L2 adapter 'dax' requires field {field_name!r}")
            continue
        if not spec.accepts(value):
            raise ConfigError(f"field {field_name!r} of L2 adapter 'dax' must be {spec.type_names()}, got {value!r}")
