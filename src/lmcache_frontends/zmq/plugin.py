"""Registers the ZeroMQ data path through the frontend hook."""

from __future__ import annotations

from lmcache_adapters.plugin import hookimpl
from lmcache_core.plugin import FrontendRegistry, ServerContext, ServerFrontend


def create_zmq_server(services: ServerContext) -> ServerFrontend:
    """The data-path server for `services` (started by the composition root)."""
    from lmcache_frontends.zmq.curve import load_curve_config
    from lmcache_frontends.zmq.kv_caches import DataPathKVCaches
    from lmcache_frontends.zmq.server import ZmqDataPathServer

    config = services.config
    server = ZmqDataPathServer(
        services.engine,
        services.memory_pool,
        clock=services.clock,
        host=config.host,
        port=config.port,
        ipc_path=config.ipc_path,
        ipc_mode=int(config.ipc_mode, 8),
        max_workers=config.max_workers,
        worker_reap_timeout_seconds=config.worker_reap_timeout_seconds,
        supported_transfer_mode=config.supported_transfer_mode,
        transfer_threads=config.transfer_threads,
        curve=load_curve_config(config),
        metrics=services.metrics,
        max_frame_bytes=config.max_frame_bytes,
        protocol=config.protocol,
        # The reaper runs in the server's periodic-thread registry (/periodic-threads, health).
        run_periodic=services.run_periodic,
        # It registers its sessions for /kvcache/requests/* and its loop check for /readyz.
        inspector=services.inspector,
        readiness=services.readiness,
        limits=services.limits,
        # The data path (sessions, lookups, leases) the composition root built.
        data_path=services.data_path,
    )
    # Its registrations answer the admin operations (checksums, warm prefetch) through the engine.
    services.engine.kv_caches.add_source(DataPathKVCaches(server))
    return server


@hookimpl
def lmcache_register_frontends(registry: FrontendRegistry) -> None:
    registry.add_server("zmq", create_zmq_server)
