"""Bodies of `POST /reconfigure/dax/<operation>` parsed into typed requests (no state touched).

Extra fields are rejected; `path` is accepted as an alias of `device_path`; `adapter_index` is
accepted and ignored (the HTTP layer resolves it):
- status: {}
- add: {device_path, size}
- remove: {device_path, mode: migrate|evict|drain = migrate, force: bool = false}
- resize: {device_path, size, mode: migrate|evict = migrate, force: bool = false}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmcache_adapters.l2.dax.config import body_path
from lmcache_adapters.l2.dax.sizes import parse_size
from lmcache_core.errors import ConfigError, InvalidValueError

__all__ = [
    "REMOVE_MODES",
    "RESIZE_MODES",
    "SUPPORTED_OPERATIONS",
    "AddDevice",
    "ReconfigureRequest",
    "RemoveDevice",
    "ResizeDevice",
    "StatusRequest",
    "UnsupportedOperationError",
    "parse_request",
]

SUPPORTED_OPERATIONS = ("status", "add", "remove", "resize")
REMOVE_MODES = ("migrate", "evict", "drain")
RESIZE_MODES = ("migrate", "evict")


class UnsupportedOperationError(InvalidValueError):
    """A reconfiguration operation this adapter does not know (HTTP 400, as the reference)."""


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """status: report the devices."""


@dataclass(frozen=True, slots=True)
class AddDevice:
    """add: map one more device of `size` bytes."""

    path: str
    size: int


@dataclass(frozen=True, slots=True)
class RemoveDevice:
    """remove: take a device out of service by migrating, evicting or draining its objects."""

    path: str
    mode: str = "migrate"
    force: bool = False


@dataclass(frozen=True, slots=True)
class ResizeDevice:
    """resize: grow or shrink a device's mapped size."""

    path: str
    size: int
    mode: str = "migrate"
    force: bool = False


ReconfigureRequest = StatusRequest | AddDevice | RemoveDevice | ResizeDevice


def parse_request(operation: str, body: Mapping[str, Any] | None) -> ReconfigureRequest:
    """The typed request of one operation; ConfigError for a bad body (InvalidSizeError /
    UnsupportedOperationError for the reference's 400 cases)."""
    if not isinstance(operation, str) or not operation.strip():
        raise UnsupportedOperationError("operation must be a non-empty string")
    op = operation.strip().lower()
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise ConfigError("request body must be a JSON object")
    if op == "status":
        _only_fields(body, {"adapter_index"}, "status")
        return StatusRequest()
    if op == "add":
        path = body_path(_without(body, "adapter_index"), "add body", {"device_path", "path", "size"})
        if "size" not in body:
            raise ConfigError("add body requires field 'size'")
        return AddDevice(path, parse_size(body["size"], "size"))
    if op == "remove":
        sub = _without(body, "adapter_index")
        path = body_path(sub, "remove body", {"device_path", "path", "mode", "force"})
        mode = _choice(sub.get("mode", "migrate"), REMOVE_MODES, "mode")
        return RemoveDevice(path, mode, _flag(sub.get("force", False), "force"))
    if op == "resize":
        sub = _without(body, "adapter_index")
        path = body_path(sub, "resize body", {"device_path", "path", "size", "mode", "force"})
        if "size" not in sub:
            raise ConfigError("resize body requires field 'size'")
        size = parse_size(sub["size"], "size")
        mode = _choice(sub.get("mode", "migrate"), RESIZE_MODES, "mode")
        return ResizeDevice(path, size, mode, _flag(sub.get("force", False), "force"))
    raise UnsupportedOperationError(
        f"unsupported dax reconfigure operation {op!r} (supported: {', '.join(SUPPORTED_OPERATIONS)})"
    )


def _only_fields(body: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ConfigError(f"unknown field(s) in {where} body: {', '.join(unknown)}")


def _without(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    out = dict(body)
    value = out.pop(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return out


def _choice(value: Any, choices: Sequence[str], name: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value.strip().lower()


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value
