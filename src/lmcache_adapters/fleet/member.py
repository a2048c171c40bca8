"""FleetMember: one server's membership in a fleet, as one component with a small lifecycle.

`attach(storage)` subscribes the cache-event reporter to the storage manager's L1 and L2 seams
(events are buffered from then on, bounded); `start(http_port=..., endpoints=...)` registers with
the coordinator once the server's ports are bound, then heartbeats and flushes on an interval;
`close_l1()` at the start of a shutdown, `stop()` after the L2 write-back drained (the final L2
stores are reported, then the server deregisters). Nothing here ever blocks the data path or
fails the server: a coordinator that is down costs counted drops and failed calls."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from lmcache_adapters.fleet.client import CoordinatorClient
from lmcache_core import metric_names as mn
from lmcache_core.fleet.buffer import EventBuffer
from lmcache_core.fleet.reporter import CacheEventReporter
from lmcache_core.plugin.server_context import Endpoint
from lmcache_core.storage_manager import StorageManager

log = logging.getLogger(__name__)

_WILDCARDS = {"0.0.0.0", "::", ""}


def advertise_address(http_host: str, coordinator_url: str) -> str:
    """The address a coordinator can call this server back at: `http_host`, unless it is a
    wildcard; then the local address of the route to the coordinator (no packet is sent)."""
    if http_host not in _WILDCARDS:
        return http_host
    host = urllib.parse.urlsplit(coordinator_url).hostname or "127.0.0.1"
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name: resolve it like the client will
        family = socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:  # no route (yet): the host's own name, which --coordinator-advertise-ip overrides
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"


class FleetMember:
    """The link of one server to its coordinator: a reporter filling a bounded EventBuffer and,
    once started, a CoordinatorClient flushing it."""

    def __init__(
        self,
        coordinator_url: str,
        *,
        instance_id: str | None = None,
        advertise_ip: str | None = None,
        http_host: str = "127.0.0.1",
        report_events: bool = True,
        heartbeat_interval: float = 5.0,
        flush_interval: float = 1.0,
        timeout_s: float = 2.0,
        max_buffered_events: int = 100_000,
        token: str | None = None,
        metadata: Mapping[str, str] | None = None,
        incarnation: int | None = None,
    ) -> None:
        self.url = coordinator_url.rstrip("/")
        self.report_events = report_events
        self.advertise_ip = advertise_ip or advertise_address(http_host, self.url)
        self._instance_id = instance_id
        # A restart is a new incarnation: the coordinator then drops this id's old L1 placements.
        self.incarnation = incarnation if incarnation is not None else int(time.time() * 1000)
        self.events = EventBuffer(instance_id or "", self.incarnation, max_entries=max_buffered_events)
        self.reporter: CacheEventReporter | None = None
        self.client: CoordinatorClient | None = None
        self._settings: dict[str, Any] = {
            "heartbeat_interval": heartbeat_interval,
            "flush_interval": flush_interval,
            "timeout_s": timeout_s,
            "token": token,
        }
        self.metadata = dict(metadata or {})
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def instance_id(self) -> str | None:
        """The membership key; until start() resolves the default, None unless one was given."""
        return self._instance_id

    def attach(self, storage: StorageManager) -> None:
        """Report `storage`'s L1 and L2 events from now on (unless event reporting is off)."""
        if self.report_events and self.reporter is None:
            self.reporter = CacheEventReporter.attach(storage, self.events)

    def start(self, *, http_port: int, endpoints: Mapping[str, Endpoint] | None = None) -> None:
        """Register with the advertise address and the ports really bound, then run: the admin
        port, and `<label>_port` in the metadata for each server-frontend endpoint with a TCP
        port (`zmq_port` for the ZeroMQ data path)."""
        with self._lock:
            if self.client is not None or self._stopped:
                return
            instance_id = self._instance_id or f"{self.advertise_ip}:{http_port}"
            self._instance_id = instance_id
            self.events.instance_id = instance_id  # no batch was stamped yet: only the client takes
            metadata = {**self.metadata, "incarnation": str(self.incarnation)}
            for label, endpoint in (endpoints or {}).items():
                if endpoint.port:
                    metadata[f"{label.replace('-', '_')}_port"] = str(endpoint.port)
            self.client = CoordinatorClient(
                self.url,
                instance_id=instance_id,
                advertise_ip=self.advertise_ip,
                http_port=http_port,
                incarnation=self.incarnation,
                metadata=metadata,
                events=self.events,
                on_heartbeat=self._refresh_capacity,
                **self._settings,
            )
            self.client.start()
        log.info("joining the fleet at %s as %s (http://%s:%d)", self.url, instance_id, self.advertise_ip, http_port)

    def _refresh_capacity(self) -> None:
        # Compartments resized at run time (/reconfigure) reach the coordinator with the next
        # heartbeat: the declaration is re-sent only when it changed.
        reporter = self.reporter
        if reporter is not None:
            reporter.refresh_capacity()

    def close_l1(self) -> None:
        """The shutdown began: L1 is about to be cleared, and deregistering drops its placements."""
        if self.reporter is not None:
            self.reporter.close_l1()

    def stop(self) -> None:
        """Flush what is buffered (best effort), deregister, stop the thread."""
        with self._lock:
            self._stopped = True
            client = self.client
        self.close_l1()
        if client is not None:
            client.stop()

    def report_status(self) -> dict[str, Any]:
        """The server's `/status` node `coordinator`; always healthy (reporting is best effort)."""
        client = self.client
        if client is not None:
            return {**client.status(), "event_reporting": self.report_events, "started": True}
        return {
            "url": self.url,
            "instance_id": self._instance_id,
            "incarnation": self.incarnation,
            "registered": False,
            "started": False,
            "event_reporting": self.report_events,
            **self.events.stats(),
            "is_healthy": True,
        }

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Scrape-time metrics: (family name, labels, value)."""
        status = self.report_status()
        yield mn.COORDINATOR_REGISTERED.name, {}, 1.0 if status["registered"] else 0.0
        yield mn.COORDINATOR_BUFFERED_EVENTS.name, {}, float(status["buffered_events"])
        yield mn.COORDINATOR_DROPPED_EVENTS.name, {}, float(status["dropped_events"])
        yield mn.COORDINATOR_SENT_BATCHES.name, {}, float(status["sent_batches"])
        yield mn.COORDINATOR_FAILED_CALLS.name, {}, float(status.get("failed_calls", 0))
        yield mn.COORDINATOR_UNREPORTED_EVENTS.name, {}, float(status.get("unreported_events", 0))
