"""CoordinatorRuntime: builds one coordinator (store, server calls, FleetService, the app, the
Waitress server, the lease-sweep and eviction threads) from a CoordinatorConfig; start and stop."""

from __future__ import annotations

import logging
import time
from typing import Any

from lmcache_adapters.fleet.memory import MemoryFleetStore
from lmcache_adapters.fleet.servers import HttpServerControl
from lmcache_core.fleet.ports import FleetStore, ServerControl
from lmcache_core.fleet.service import FleetService, FleetSettings
from lmcache_core.periodic import PeriodicThread
from lmcache_core.ports import Clock
from lmcache_frontends.admin.server import AdminServer
from lmcache_frontends.coordinator.app import MAX_BODY_BYTES, create_coordinator_app
from lmcache_frontends.coordinator.common import CoordinatorContext
from lmcache_frontends.coordinator.config import CoordinatorConfig

log = logging.getLogger(__name__)


def build_store(config: CoordinatorConfig) -> FleetStore:
    """The FleetStore the config names (Redis is imported only when used)."""
    if config.store_kind == "memory":
        return MemoryFleetStore()
    from lmcache_adapters.fleet.redis_store import RedisFleetStore

    assert config.redis_url is not None
    client = None
    if config.redis_cluster:
        import redis

        client = redis.RedisCluster.from_url(config.redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    return RedisFleetStore(config.redis_url, prefix=config.key_prefix, buckets=config.shard_buckets, client=client)


def settings_from(config: CoordinatorConfig) -> FleetSettings:
    return FleetSettings(
        lease_ttl=config.instance_timeout,
        chunk_size=config.chunk_size,
        hash_algorithm=config.hash_algorithm,
        eviction_ratio=config.eviction_ratio,
        trigger_watermark=config.trigger_watermark,
        eviction_interval=config.eviction_check_interval or 5.0,
        eviction_retry_seconds=config.eviction_retry_seconds,
        resync_delay=config.resync_delay,
        resync=not config.disable_startup_resync,
    )


class CoordinatorRuntime:
    """One running coordinator; every dependency can be handed in (tests: a fake clock, a store)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        *,
        store: FleetStore | None = None,
        servers: ServerControl | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.store = store if store is not None else build_store(config)
        self.servers = servers or HttpServerControl(timeout_s=config.server_timeout, token=config.server_token)
        self.service = FleetService(self.store, self.servers, settings_from(config), clock=clock)
        self.context = CoordinatorContext(config, self.service, started_at=time.time())
        self.app = create_coordinator_app(self.context)
        self.http = AdminServer(
            self.app, config.host, config.port, threads=config.threads, max_request_body_size=MAX_BODY_BYTES + (1 << 20)
        )
        self.threads: list[PeriodicThread] = []
        if config.health_check_interval > 0:
            self.threads.append(
                PeriodicThread("fleet-lease-sweep", self._sweep, interval_seconds=config.health_check_interval, level="high")
            )
        if config.eviction_check_interval > 0:
            self.threads.append(
                PeriodicThread("fleet-eviction", self._evict, interval_seconds=config.eviction_check_interval, level="high")
            )

    @property
    def url(self) -> str:
        return self.http.url

    def _sweep(self) -> Any:
        expired = self.service.sweep_leases()
        return {"expired": expired} if expired else None

    def _evict(self) -> Any:
        return self.service.eviction_cycle().summary()

    def start(self) -> None:
        self.http.start()
        for thread in self.threads:
            thread.start()
        log.info(
            "lmcache coordinator %s listening on %s (store: %s)",
            self.service.holder, self.url, self.store.describe().get("address", self.store.describe()["kind"]),
        )

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop(timeout=5.0)
        try:
            self.service.resign()  # the next coordinator takes the loop over at once
        except Exception as exc:  # the store may be gone; the lease then just expires
            log.debug("could not resign the eviction lease: %s", exc)
        self.http.stop()
        self.servers_close()
        self.store.close()

    def servers_close(self) -> None:
        close = getattr(self.servers, "http", None)
        if close is not None:
            close.close()
