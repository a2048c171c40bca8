"""The fleet member in a bootstrapped stack: built only with --coordinator-url, shown in /status
and /metrics, and stopped after the L2 write-back drained (the final L2 stores reach the
coordinator, then the server deregisters)."""

from __future__ import annotations

from lmcache_adapters.l2.mock import MockL2Adapter
from lmcache_core.fleet.model import Tier
from lmcache_core.fleet.service import FleetService
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.l1.results import OpResult
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack


def test_no_coordinator_url_no_member() -> None:
    services = in_memory_stack(ServerConfig())
    try:
        assert services.fleet is None
        status = create_app(services).test_client().get("/status").get_json()
        assert "coordinator" not in status
    finally:
        services.close()


def test_the_member_is_in_status_and_metrics_and_leaves_after_the_l2_drain(coordinator: tuple[str, FleetService]) -> None:
    url, service = coordinator
    config = ServerConfig(
        coordinator_url=url, instance_id="unit-srv", coordinator_heartbeat_interval=0.05,
        coordinator_event_flush_interval=0.02,
    )
    # A slow L2: the write-back is still running when the shutdown starts.
    services = in_memory_stack(config, l2_adapters=[("slow", MockL2Adapter(bandwidth_gbps=0.001))])
    closed = False
    try:
        assert services.fleet is not None
        client = create_app(services).test_client()
        node = client.get("/status").get_json()["coordinator"]
        assert node["started"] is False and node["url"] == url and node["is_healthy"]
        services.fleet.start(http_port=9999)
        keys = [ObjectKey(i.to_bytes(32, "big"), "m", kv_rank_for(1, 0)) for i in range(4)]
        l1 = services.storage.l1
        assert all(r is OpResult.SUCCESS for r, _ in l1.reserve_write(keys, [65536] * 4))
        assert all(r is OpResult.SUCCESS for r in l1.finish_write(keys))
        metrics = client.get("/metrics").get_data(as_text=True)
        assert "lmcache_mp_coordinator_buffered_events" in metrics
        assert "lmcache_mp_coordinator_dropped_events_total 0.0" in metrics
        services.close()
        closed = True
        # The L2 stores of the drain were reported before the goodbye; L1 went with it.
        assert service.store.instance("unit-srv") is None
        assert service.usage().placements[Tier.L2] == 4 and service.usage().placements[Tier.L1] == 0
    finally:
        if not closed:
            services.close()
