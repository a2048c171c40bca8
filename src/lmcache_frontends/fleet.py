"""The server's fleet member (`--coordinator-url`), built from the configuration and wired into
a server stack: its cache-event reporter on the storage manager, its `coordinator` node in
`/status`, its metrics. The composition root calls these two functions and nothing else."""

from __future__ import annotations

from typing import Any

from lmcache_adapters.fleet.member import FleetMember
from lmcache_core.ports import MetricsSink
from lmcache_core.storage_manager import StorageManager
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.version import package_version


def build_fleet_member(config: ServerConfig) -> FleetMember | None:
    """The fleet member `config` asks for; None without `--coordinator-url`."""
    if config.coordinator_url is None:
        return None
    return FleetMember(
        config.coordinator_url,
        instance_id=config.instance_id,
        advertise_ip=config.coordinator_advertise_ip,
        http_host=config.http_host,
        report_events=config.coordinator_event_reporting,
        heartbeat_interval=config.coordinator_heartbeat_interval,
        flush_interval=config.coordinator_event_flush_interval,
        timeout_s=config.coordinator_timeout_seconds,
        max_buffered_events=config.coordinator_max_buffered_events,
        token=config.coordinator_token,
        metadata={"server": f"lmcache-server {package_version()}", "chunk_size": str(config.chunk_size)},
    )


def attach_fleet_member(member: FleetMember, storage: StorageManager, engine: Any, metrics: MetricsSink) -> None:
    """Subscribe `member` to the storage events, show it in /status (`coordinator`) and /metrics."""
    from lmcache_adapters.metrics import PrometheusMetricsSink

    member.attach(storage)
    engine.add_status_contributor("coordinator", lambda: {"coordinator": member.report_status(), "is_healthy": True})
    if isinstance(metrics, PrometheusMetricsSink):
        metrics.add_scrape_source("coordinator", lambda: list(member.samples()))

