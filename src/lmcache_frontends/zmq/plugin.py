"""Registers the ZeroMQ data path through the frontend hook."""

from __future__ import annotations

from typing import Any

from lmcache_adapters.plugin import hookimpl
from lmcache_core.plugin import FrontendRegistry


def create_zmq_server(services: Any) -> Any:
    """The data-path server for `services` (started by the composition root)."""
    from lmcache_core.clients import ClientLimits
    from lmcache_frontends.zmq.curve import load_curve_config
    from lmcache_frontends.zmq.kv_caches import DataPathKVCaches
    from lmcache_frontends.zmq.server import ZmqDataPathServer

    config = services.config
    if services.engine is None or services.memory_pool is None:
        raise RuntimeError("the ZeroMQ data path needs a started engine and L1 pool")
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
        session_ttl_seconds=config.session_ttl_seconds,
        supported_transfer_mode=config.supported_transfer_mode,
        transfer_threads=config.transfer_threads,
        curve=load_curve_config(config),
        metrics=getattr(services, "metrics", None),
        max_frame_bytes=config.max_frame_bytes,
        protocol=config.protocol,
        # The reaper runs in the server's periodic-thread registry (/periodic-threads, health).
        run_periodic=services.run_periodic,
        # It registers its sessions for /kvcache/requests/* and its loop check for /readyz.
        inspector=services.inspector,
        readiness=services.readiness,
        limits=ClientLimits(
            max_tokens_per_key=config.max_tokens_per_key,
            max_sessions=config.max_sessions,
            max_sessions_per_client=config.max_sessions_per_client,
            max_lookups_per_client=config.max_lookups_per_client,
            max_pending_write_bytes_per_client=config.max_pending_write_bytes_per_client or None,
        ),
    )
    # Its registrations answer the admin operations (checksums, warm prefetch) through the engine.
    services.engine.kv_caches.add_source(DataPathKVCaches(server))
    return server


@hookimpl
def lmcache_register_frontends(registry: FrontendRegistry) -> None:
    registry.add_server("zmq", create_zmq_server)
