"""QuotaManager: per-cache_salt soft byte limits (read by IsolatedLRU), optionally persisted."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from lmcache_core.errors import ConfigError
from lmcache_core.keys import validate_cache_salt

log = logging.getLogger(__name__)

_STATE_VERSION = 1


def _validate_limit(limit: Any, where: str = "quota limit") -> int:
    if isinstance(limit, bool) or not isinstance(limit, int | float):
        raise ConfigError(f"{where} must be a number of bytes, got {type(limit).__name__}")
    if isinstance(limit, float) and not math.isfinite(limit):
        raise ConfigError(f"{where} must be finite, got {limit!r}")
    if limit < 0:
        raise ConfigError(f"{where} must be >= 0, got {limit!r}")
    return int(limit)


class QuotaManager:
    """Soft byte limits per cache_salt.

    A salt with no registered quota has limit 0 (allow-list semantics under IsolatedLRU); the
    empty salt "" is a valid salt like any other. With `state_path`, every change is written
    atomically (temp file, fsync, rename) and the file is loaded at construction; a file that
    cannot be parsed raises ConfigError naming it and is left untouched. Thread-safe."""

    def __init__(self, state_path: Path | str | None = None) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, int] = {}
        self._state_path = Path(state_path) if state_path is not None else None
        self._state_error: str | None = None
        if self._state_path is not None:
            self._limits = self._load(self._state_path)

    @property
    def state_path(self) -> Path | None:
        return self._state_path

    def set(self, cache_salt: str, limit_bytes: int | float) -> int:
        """Create or replace a salt's quota; returns the stored limit in whole bytes."""
        validate_cache_salt(cache_salt)
        limit = _validate_limit(limit_bytes)
        with self._lock:
            previous = self._limits.get(cache_salt)
            self._limits[cache_salt] = limit
            try:
                self._persist()
            except BaseException:
                # Memory must not claim what the disk does not hold after a restart.
                if previous is None:
                    del self._limits[cache_salt]
                else:
                    self._limits[cache_salt] = previous
                raise
        return limit

    def get(self, cache_salt: str) -> int | None:
        """The salt's limit in bytes, or None when it has no quota."""
        with self._lock:
            return self._limits.get(cache_salt)

    def delete(self, cache_salt: str) -> bool:
        """Remove a salt's quota; False when it had none."""
        with self._lock:
            if cache_salt not in self._limits:
                return False
            previous = self._limits.pop(cache_salt)
            try:
                self._persist()
            except BaseException:
                self._limits[cache_salt] = previous
                raise
            return True

    def list(self) -> dict[str, int]:
        """A snapshot of every registered quota."""
        with self._lock:
            return dict(self._limits)

    def limit_for(self, cache_salt: str) -> int:
        """The effective limit: the quota, or 0 when the salt has none."""
        with self._lock:
            return self._limits.get(cache_salt, 0)

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            count = len(self._limits)
            error = self._state_error
        return {
            "is_healthy": error is None,
            "quota_count": count,
            "persistent": self._state_path is not None,
            "state_path": str(self._state_path) if self._state_path is not None else None,
            "state_error": error,
        }

    def verify_persisted(self) -> str:
        """Check that the state file still holds what memory holds, and write it again when it
        does not (deleted, truncated, edited, the volume remounted): what a restart would load
        must be what is in force. Raises OSError when the file cannot be read or written."""
        path = self._state_path
        if path is None:
            return "not persistent"
        with self._lock:
            try:
                try:
                    on_disk: dict[str, int] | None = self._load(path) if path.exists() else None
                except ConfigError:
                    on_disk = None  # unreadable JSON: replace it with what is in force
                if on_disk == self._limits:
                    self._state_error = None
                    return f"{len(self._limits)} quota(s) in sync with {path}"
                self._persist()
            except OSError as exc:
                self._state_error = f"{type(exc).__name__}: {exc}"
                raise
            self._state_error = None
        what = "missing" if on_disk is None else "out of date"
        log.warning("quota state file %s was %s; wrote the %d quota(s) in force", path, what, len(self._limits))
        return f"rewrote {path} ({what})"

    # -- persistence ----------------------------------------------------------------------

    @staticmethod
    def _load(path: Path) -> dict[str, int]:
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"cannot read quota state file {path}: {exc}") from exc
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(
                f"quota state file {path} is not valid JSON ({exc}); fix or remove it"
            ) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("quotas"), dict):
            raise ConfigError(f"quota state file {path} has no 'quotas' object; fix or remove it")
        limits: dict[str, int] = {}
        for salt, limit in doc["quotas"].items():
            try:
                validate_cache_salt(salt)
                limits[salt] = _validate_limit(limit, f"quota of {salt!r}")
            except ValueError as exc:
                raise ConfigError(f"quota state file {path}: {exc}") from exc
        return limits

    def _persist(self) -> None:
        path = self._state_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(
            {"version": _STATE_VERSION, "quotas": self._limits}, indent=2, sort_keys=True
        )
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
        # The rename itself must survive a power cut: sync the directory entry too.
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)
