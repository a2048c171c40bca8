"""ReconfigureService: the L2 adapters whose devices change at runtime, their status by backend,
and one operation applied to one of them; and the arenas of an L1 on Device-DAX."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmcache_core.cache_ops.objects import reconfigurable_target
from lmcache_core.errors import ConflictError, InvalidRequestError, NotFoundError
from lmcache_core.l1.arenas import L1Arenas
from lmcache_core.l2.entry import L2AdapterEntry
from lmcache_core.ports import Reconfigurable
from lmcache_core.storage_manager import StorageManager

log = logging.getLogger(__name__)

L1_NOT_DAX = "L1 is not Device-DAX backed (--l1-devdax-path not set)"
"""LMCache 0.5.6's answer (409) on its L1 DAX routes when L1 is not on Device-DAX."""


@dataclass(frozen=True)
class ReconfigurableAdapter:
    """One runtime-manageable adapter: its entry, its backend string and the target to call."""

    entry: L2AdapterEntry
    backend: str
    target: Reconfigurable


def normalize(value: str, what: str) -> str:
    """A backend or operation as the routes compare it (trimmed, lower case); InvalidRequestError
    when empty."""
    name = value.strip().lower()
    if not name:
        raise InvalidRequestError(f"{what} must be non-empty")
    return name


class ReconfigureService:
    """Runtime reconfiguration of L2 adapters, by backend (`dax`) and backend-local index."""

    def __init__(self, storage: StorageManager) -> None:
        self._storage = storage

    def backends(self) -> dict[str, list[ReconfigurableAdapter]]:
        """Backend string -> its runtime-manageable adapters, in configuration order."""
        out: dict[str, list[ReconfigurableAdapter]] = {}
        for entry in self._storage.l2_adapters:
            target = reconfigurable_target(entry.adapter)
            if target is not None:
                backend = entry.adapter.kind.strip().lower()
                out.setdefault(backend, []).append(ReconfigurableAdapter(entry, backend, target))
        return out

    def status(self, backend: str) -> list[dict[str, Any]]:
        """Each adapter of `backend`: `adapter_index` (backend-local), `name`, `l2_index` and its
        own reconfiguration report; a report that fails shows as an unhealthy entry."""
        out = []
        for local_index, item in enumerate(self.backends().get(normalize(backend, "backend"), [])):
            try:
                report = dict(item.target.reconfigure_status())
            except Exception as exc:  # one broken adapter must not hide the others
                log.warning("reconfigure_status of %s failed: %s", item.entry.name, exc, exc_info=True)
                report = {"is_healthy": False, "error": str(exc) or type(exc).__name__}
            head = {"adapter_index": local_index, "name": item.entry.name, "l2_index": item.entry.index}
            out.append({**head, **{k: v for k, v in report.items() if k not in head}})
        return out

    def resolve(self, backend: str, adapter_index: int) -> ReconfigurableAdapter:
        """The `adapter_index`-th adapter of `backend`; NotFoundError when there is none."""
        name = normalize(backend, "backend")
        adapters = self.backends().get(name, [])
        if not 0 <= adapter_index < len(adapters):
            raise NotFoundError(
                f"adapter_index {adapter_index} out of range for backend {name!r} ({len(adapters)} adapter(s))"
            )
        return adapters[adapter_index]

    def apply(self, target: ReconfigurableAdapter, operation: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Apply `operation` with `body` to one adapter (its errors propagate: ConfigError for a
        bad body, NotFoundError, ConflictError, ForbiddenOperationError). Adding a device that
        L1 maps is a ConflictError: both tiers would overwrite each other's bytes."""
        op = normalize(operation, "operation")
        arenas = self._storage.l1_arenas
        path = body.get("device_path", body.get("path")) if op == "add" else None
        if arenas is not None and isinstance(path, str) and arenas.owns_device(path):
            raise ConflictError(f"device {path!r} is mapped by the L1 pool (an L1 Device-DAX arena)")
        return target.target.apply_reconfiguration(op, body)

    def l1_arenas(self) -> L1Arenas:
        """The arenas of an L1 on Device-DAX; ConflictError (as LMCache 0.5.6) when L1 is not."""
        arenas = self._storage.l1_arenas
        if arenas is None:
            raise ConflictError(L1_NOT_DAX)
        return arenas
