"""Readiness checks that components report into (a data path's socket loop, ...), so the
readiness probe asks every registered check instead of knowing components by name."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from lmcache_core.errors import ConflictError

ReadinessCheck = Callable[[], dict[str, Any]]
"""Returns {"ok": bool, "error": str (when not ok), ...details}; may raise (a failed check)."""


class ReadinessRegistry:
    """Named readiness checks: a component registers its own when it starts and unregisters it
    when it stops. Thread-safe; a name registered twice is a ConflictError."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, ReadinessCheck] = {}

    def register(self, name: str, check: ReadinessCheck) -> None:
        with self._lock:
            if name in self._checks:
                raise ConflictError(f"a readiness check named {name!r} is registered already")
            self._checks[name] = check

    def unregister(self, name: str) -> None:
        with self._lock:
            self._checks.pop(name, None)

    def checks(self) -> dict[str, ReadinessCheck]:
        """A snapshot, in registration order."""
        with self._lock:
            return dict(self._checks)
