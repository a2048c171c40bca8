"""Settings section: Joining a fleet: instance id, coordinator URL, heartbeats, cache-event reporting."""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_frontends.options import check_count, check_non_empty, check_positive, option
from lmcache_frontends.settings.values import (
    check_coordinator_url,
    check_event_transport,
    check_instance_id,
)


@dataclass(frozen=True)
class FleetSettings:
    """Joining a fleet: instance id, coordinator URL, heartbeats, cache-event reporting."""

    instance_id: str | None = option(
        None,
        "Stable identity of this server in a fleet: its coordinator membership key (LMCache 0.5.6's flag). "
        "Default: <advertise ip>:<admin port>, the same across restarts, so a restart is a new incarnation "
        "of the same member.",
        check=check_instance_id,
    )
    coordinator_url: str | None = option(
        None,
        "Join the fleet coordinator at this URL (lmcache coordinator, or LMCache's): register, heartbeat, "
        "report L1 and L2 cache events, deregister at shutdown. Unset = no fleet.",
        section="coordinator",
        metavar="URL",
        check=check_coordinator_url,
    )
    coordinator_advertise_ip: str | None = option(
        None,
        "Address the coordinator calls this server's admin API at. Default: --http-host, or the address "
        "that routes to the coordinator when --http-host is a wildcard (0.0.0.0, ::).",
        section="coordinator",
        metavar="IP",
        check=check_non_empty,
    )
    coordinator_heartbeat_interval: float = option(
        5.0, "Seconds between heartbeats (keep well under the coordinator's --instance-timeout).",
        section="coordinator", check=check_positive,
    )
    coordinator_event_reporting: bool = option(
        True,
        "Report L1 and L2 cache events (store, access, delete) to the coordinator. On by default here "
        "(LMCache needs the flag); false (env or file) reports none: the server is listed, nothing more.",
        section="coordinator",
    )
    coordinator_event_flush_interval: float = option(
        1.0, "Seconds between flushes of the buffered cache events.", section="coordinator", check=check_positive
    )
    coordinator_l2_event_reporting: bool = option(
        False,
        "LMCache 0.5.0's spelling of --coordinator-event-reporting (turns it on even when the env or a "
        "file turned it off).",
        section="coordinator",
    )
    coordinator_l2_event_flush_interval: float | None = option(
        None,
        "LMCache 0.5.0's spelling of --coordinator-event-flush-interval (used when that one is left at "
        "its default).",
        section="coordinator",
        check=check_positive,
    )
    coordinator_event_transport: str = option(
        "http", "LMCache 0.5.6's event transport: http only here (kafka is refused).",
        section="coordinator", metavar="{http}", check=check_event_transport,
    )
    coordinator_max_buffered_events: int = option(
        100_000,
        "Cache events held while the coordinator is slow or down; past it new events are dropped and "
        "counted (the coordinator then under-reports this server until its next stores).",
        section="coordinator", check=check_count,
    )
    coordinator_timeout_seconds: float = option(
        2.0, "Timeout of each call to the coordinator.", section="coordinator", check=check_positive
    )
    coordinator_token: str | None = option(
        None,
        "Bearer token sent to the coordinator (one with its admin scope, when it requires tokens).",
        section="coordinator", check=check_non_empty, secret=True,
    )
