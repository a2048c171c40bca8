"""Byte sizes as users write them: an int or a string with a base-1024 unit ("100GiB")."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from lmcache_core.errors import InvalidValueError

__all__ = ["InvalidSizeError", "parse_size"]


class InvalidSizeError(InvalidValueError):
    """A size value is not a positive byte count or a string like "100GiB" (HTTP 400, as the reference)."""


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}


def parse_size(value: Any, field_name: str = "size") -> int:
    """A positive byte count from an int or a string with a base-1024 unit ("100GiB", "512MiB",
    "1G", "4096"); raise InvalidSizeError naming `field_name` otherwise."""
    if isinstance(value, bool):
        raise InvalidSizeError(f"{field_name} must be a positive integer byte count or a string like '100GiB', got {value!r}")
    if isinstance(value, int):
        resolved = value
    elif isinstance(value, str) and len(value) <= 64:
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _SIZE_UNITS:
            raise InvalidSizeError(
                f"{field_name} must be a positive integer byte count or a string like '100GiB', got {value!r}"
            )
        try:
            resolved = int(Decimal(match.group(1)) * _SIZE_UNITS[unit])
        except InvalidOperation:  # pragma: no cover - the regex admits only decimal numbers
            raise InvalidSizeError(f"{field_name} is not a number: {value!r}") from None
    else:
        raise InvalidSizeError(f"{field_name} must be a positive integer byte count or a string like '100GiB', got {value!r}")
    if resolved <= 0:
        raise InvalidSizeError(f"{field_name} must be positive, got {value!r}")
    return resolved
