"""The factories the composition root (`bootstrap`) builds the server's parts with, from the
configuration: L1 pool, metrics sink, L2 adapters, quotas, policy, L1, storage manager, hasher.

Only `bootstrap` calls them; blueprints and domain code receive plain objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmcache_adapters.l2.serde import make_codec, wrap_with_serde
from lmcache_adapters.l2.stack import as_l2_adapter
from lmcache_adapters.metrics import PrometheusMetricsSink
from lmcache_core.errors import ConfigError
from lmcache_core.eviction.base import EvictionPolicy
from lmcache_core.hashing import TokenHasher
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l2.eviction_controller import L2EvictionSettings
from lmcache_core.plugin import AdapterContext, L2AdapterRegistry
from lmcache_core.ports import Clock, L2Adapter, MemoryPool, MetricsSink, NullMetricsSink
from lmcache_core.quota import QuotaManager
from lmcache_core.storage_manager import StorageManager
from lmcache_frontends.config import ServerConfig

log = logging.getLogger(__name__)

QUOTA_STATE_FILE = "quotas.json"

AdapterSpec = tuple[str, L2Adapter, dict[str, Any] | None, bool]
"""(label, adapter, eviction settings, shared)."""


@dataclass(frozen=True)
class ServerAdapterContext:
    """The server's one implementation of the `AdapterContext` Protocol (`lmcache_core.plugin`,
    exported by the SDK): what an L2 adapter factory receives for one `--l2-adapter`."""

    config: ServerConfig
    clock: Clock
    index: int
    name: str
    metrics: MetricsSink = field(default_factory=NullMetricsSink)

    @property
    def state_dir(self) -> Path | None:
        return Path(self.config.state_dir) if self.config.state_dir else None


# --------------------------------------------------------------------------- factories


def create_memory_pool(config: ServerConfig) -> MemoryPool:
    """The L1 pool sized by --l1-size-gb: on the --l1-devdax-path device when given, else in
    shared memory (imports torch: only when really built)."""
    if config.l1_devdax_path is not None:
        from lmcache_adapters.memory.dax_pool import create_dax_pool

        return create_dax_pool(config.l1_devdax_path, config.l1_size_gb)
    from lmcache_adapters.memory.shm_pool import create_l1_pool

    return create_l1_pool(config.l1_size_gb, shm_suffix=config.shm_name)


def create_metrics_sink(config: ServerConfig) -> PrometheusMetricsSink:
    """The server's Prometheus sink (its own registry), honouring --metrics-labels."""
    return PrometheusMetricsSink(
        labels_enabled=config.metrics_labels == "on", max_label_values=config.metrics_max_label_values
    )


def build_l2_adapters(
    config: ServerConfig, registry: L2AdapterRegistry, clock: Clock, metrics: MetricsSink | None = None
) -> list[AdapterSpec]:
    """Validate every --l2-adapter against the registry, then build them in order.

    All configurations are checked before any adapter is built, so a typo in the second one
    never leaves the first half-started; an adapter whose construction fails closes the ones
    built before it. Errors are ConfigErrors naming the flag, its position and the field."""
    parsed = []
    for position, raw in enumerate(config.l2_adapters, start=1):
        try:
            spec, fields = registry.parse(raw)
        except ConfigError as exc:
            raise ConfigError(f"--l2-adapter #{position}: {exc}") from None
        name = fields.pop("name", None) or spec.kind
        eviction = fields.pop("eviction", None)
        serde = fields.pop("serde", None)
        shared = bool(fields.pop("shared", False))
        try:
            if eviction is not None:
                L2EvictionSettings.parse(name, eviction)
            if serde is not None:
                make_codec(serde)
        except ConfigError as exc:
            raise ConfigError(f"--l2-adapter #{position}: {exc}") from None
        parsed.append((spec, name, fields, eviction, serde, shared))

    built: list[AdapterSpec] = []
    try:
        for index, (spec, name, fields, eviction, serde, shared) in enumerate(parsed):
            context: AdapterContext = ServerAdapterContext(
                config=config, clock=clock, index=index, name=name, metrics=metrics or NullMetricsSink()
            )
            try:
                # A factory returns a full L2Adapter or a bare StorageBackend (given the standard stack).
                adapter = as_l2_adapter(
                    spec.factory(dict(fields), context), name=name, metrics=context.metrics, clock=clock
                )
                if serde is not None:
                    adapter = wrap_with_serde(adapter, serde)
            except ConfigError as exc:
                raise ConfigError(f"--l2-adapter #{index + 1} ({spec.kind}): {exc}") from None
            built.append((name, adapter, eviction, shared))
    except BaseException:
        for name, adapter, *_ in reversed(built):
            try:
                adapter.close()
            except Exception:
                log.exception("closing L2 adapter %s after a failed start", name)
        raise
    return built


def create_quotas(config: ServerConfig) -> QuotaManager:
    state = Path(config.state_dir) / QUOTA_STATE_FILE if config.state_dir else None
    if state is not None:
        try:
            state.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--state-dir {config.state_dir!r} cannot be created: {exc.strerror or exc}") from None
    return QuotaManager(state_path=state)


def create_policy(config: ServerConfig, quotas: QuotaManager) -> EvictionPolicy:
    from lmcache_core.eviction import make_policy

    return make_policy(config.eviction_policy, quotas)


def create_l1(pool: MemoryPool, config: ServerConfig, clock: Clock) -> L1Manager:
    return L1Manager(
        pool,
        clock=clock,
        write_ttl_seconds=config.l1_write_ttl_seconds,
        read_ttl_seconds=config.l1_read_ttl_seconds,
    )


def create_storage(
    l1: L1Manager,
    policy: EvictionPolicy,
    quotas: QuotaManager,
    l2_adapters: list[AdapterSpec],
    config: ServerConfig,
    clock: Clock,
    metrics: MetricsSink | None = None,
) -> StorageManager:
    from lmcache_core.eviction import make_policy

    return StorageManager(
        l1,
        policy=policy,
        quotas=quotas,
        l2_adapters=l2_adapters,
        clock=clock,
        eviction_interval_seconds=config.eviction_interval_seconds,
        trigger_watermark=config.eviction_trigger_watermark,
        eviction_ratio=config.eviction_ratio,
        l2_store_policy=config.l2_store_policy,
        l2_prefetch_policy=config.l2_prefetch_policy,
        l2_prefetch_max_in_flight=config.l2_prefetch_max_in_flight,
        l2_policy_factory=lambda name: make_policy(name, quotas),
        metrics=metrics,
    )


def create_hasher(config: ServerConfig) -> TokenHasher:
    return TokenHasher(algorithm=config.hash_algorithm, chunk_size=config.chunk_size)
