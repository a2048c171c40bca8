"""The `dax` kind: a DaxBackend behind the standard L2 stack, and its factory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmcache_adapters.l2.dax.backend import DaxBackend
from lmcache_adapters.l2.dax.config import (
    DEFAULT_RECONFIGURE_TIMEOUT_S,
    DaxDeviceConfig,
    check_adapter_config,
)
from lmcache_adapters.l2.instruments import L2Instruments
from lmcache_adapters.l2.stack import DEFAULT_WORKERS, BackendL2Adapter, StackContext, check_workers
from lmcache_core.ports import MetricsSink

__all__ = ["DaxL2Adapter", "create_dax_adapter"]


class DaxL2Adapter(BackendL2Adapter):
    """The `dax` kind: a DaxBackend behind the standard L2 stack; reconfigurable at run time."""

    backend: DaxBackend

    def __init__(
        self,
        devices: Sequence[DaxDeviceConfig | Mapping[str, Any]],
        slot_bytes: int,
        *,
        max_workers: int = DEFAULT_WORKERS,
        placement: str = "most_free",
        preallocate: bool = True,
        name: str = "dax",
        metrics: MetricsSink | None = None,
        reconfigure_timeout_s: float = DEFAULT_RECONFIGURE_TIMEOUT_S,
    ) -> None:
        instruments = L2Instruments(metrics, adapter=name, kind=DaxBackend.kind)
        check_workers(max_workers)  # before any device is mapped
        backend = DaxBackend(
            devices,
            slot_bytes,
            placement=placement,
            preallocate=preallocate,
            name=name,
            instruments=instruments,
            reconfigure_timeout_s=reconfigure_timeout_s,
        )
        # memory speed: one task per batch, keys in order
        super().__init__(backend, name=name, max_workers=max_workers, instruments=instruments, split_batches=False)

    @property
    def slot_bytes(self) -> int:
        return self.backend.slot_bytes

    def owns_device(self, device_path: str) -> bool:
        """OwnsDevices: the backend's answer."""
        return self.backend.owns_device(device_path)

    def probe(self) -> None:
        """ProbesBackend: the backend's probe."""
        self.backend.probe()

    def reconfigure_status(self) -> dict[str, Any]:
        """Reconfigurable: the backend's devices."""
        return self.backend.reconfigure_status()

    def apply_reconfiguration(self, operation: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        """Reconfigurable: add / remove / resize a device."""
        return self.backend.apply_reconfiguration(operation, body)

    def add_device(self, path: str, size: int | None) -> dict[str, Any]:
        return self.backend.add_device(path, size)

    def remove_device(self, path: str, *, mode: str = "migrate", force: bool = False) -> dict[str, Any]:
        return self.backend.remove_device(path, mode=mode, force=force)

    def resize_device(self, path: str, size: int, *, mode: str = "migrate", force: bool = False) -> dict[str, Any]:
        return self.backend.resize_device(path, size, mode=mode, force=force)


def create_dax_adapter(config: dict[str, Any], services: Any) -> DaxL2Adapter:
    """Factory registered for kind `dax`: `config` is the `--l2-adapter` JSON without `type`."""
    check_adapter_config(config)
    context = StackContext.of(services, config, "dax")
    return DaxL2Adapter(
        config["devices"],
        config["slot_bytes"],
        max_workers=config.get("max_workers") or DEFAULT_WORKERS,
        placement=config.get("placement") or "most_free",
        preallocate=True if config.get("preallocate") is None else config["preallocate"],
        name=context.name,
        metrics=context.metrics,
    )
