"""CoordinatorClient: what a server runs to join a fleet: register with its advertise address,
heartbeat, re-register when the coordinator forgot it (404), deregister on shutdown, and flush
its cache events (an EventBuffer) on an interval. Best effort throughout: a down coordinator
never blocks the data path and never stops the server; failures and drops are counted for the
server's status."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lmcache_adapters.fleet.http import JsonHttp, error_text
from lmcache_core.fleet.buffer import EventBuffer
from lmcache_core.fleet.model import EventBatch, Op, Tier
from lmcache_core.fleet.ports import ServerUnreachable
from lmcache_core.fleet.wire import batch_to_json

log = logging.getLogger(__name__)

_LEGACY_TYPES = {Op.STORE: "store", Op.DELETE: "delete", Op.ACCESS: "lookup"}


class CoordinatorClient:
    """One server's link to a coordinator (`start()` runs its thread; `stop()` deregisters)."""

    def __init__(
        self,
        coordinator_url: str,
        *,
        instance_id: str,
        advertise_ip: str,
        http_port: int,
        incarnation: int | None = None,
        token: str | None = None,
        metadata: Mapping[str, str] | None = None,
        heartbeat_interval: float = 5.0,
        flush_interval: float = 1.0,
        timeout_s: float = 2.0,
        max_buffered_events: int = 100_000,
        max_batches_per_request: int = 500,
        events: EventBuffer | None = None,
        on_heartbeat: Callable[[], object] | None = None,
    ) -> None:
        """`events`: a buffer filled before the client existed (a server's reporter starts
        buffering before its ports are known); it must be stamped with the same id and
        incarnation. Default: a new one of `max_buffered_events`. `on_heartbeat`: called on the
        client's thread before each registration or heartbeat (the server re-checks its capacity
        declaration there); its failure is logged and the heartbeat goes on."""
        if heartbeat_interval <= 0 or flush_interval <= 0:
            raise ValueError("heartbeat and flush intervals must be > 0")
        self.url = coordinator_url.rstrip("/")
        self.instance_id = instance_id
        self.advertise_ip = advertise_ip
        self.http_port = http_port
        self.metadata = dict(metadata or {})
        # A restart is a new incarnation: the coordinator then drops this id's old L1 placements.
        self.incarnation = incarnation if incarnation is not None else int(time.time() * 1000)
        if events is not None and (events.instance_id, events.incarnation) != (instance_id, self.incarnation):
            raise ValueError("the event buffer is stamped with another instance id or incarnation")
        self.events = events or EventBuffer(instance_id, self.incarnation, max_entries=max_buffered_events)
        self.heartbeat_interval = heartbeat_interval
        self.flush_interval = flush_interval
        self.max_batches_per_request = max_batches_per_request
        self.http = JsonHttp(timeout_s=timeout_s, token=token, user_agent="lmcache-server")
        self.registered = False
        self.legacy = False
        """True once the coordinator answered 404 to `POST /events`: an LMCache 0.5.0
        coordinator, which takes L2 events only, on `POST /l2/events`."""
        self._legacy_seq = 0
        self.unreported_events = 0
        self.registrations = 0
        self.failed_calls = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_heartbeat = 0.0
        self._on_heartbeat = on_heartbeat

    # ------------------------------------------------------------------ calls

    def register(self) -> bool:
        body = {
            "instance_id": self.instance_id,
            "ip": self.advertise_ip,
            "http_port": self.http_port,
            "metadata": self.metadata,
        }
        status, reply = self._call("POST", "/instances", body)
        if status is not None and 200 <= status < 300:
            self.registered = True
            self.registrations += 1
            return True
        return False

    def heartbeat(self) -> bool:
        """One heartbeat; a 404 (the coordinator forgot this server) re-registers at once."""
        status, _ = self._call("PUT", f"/instances/{self.instance_id}/heartbeat")
        if status == 404:
            log.info("coordinator %s no longer knows %s; registering again", self.url, self.instance_id)
            self.registered = False
            return self.register()
        return status is not None and 200 <= status < 300

    def deregister(self) -> None:
        if self.registered:
            self._call("DELETE", f"/instances/{self.instance_id}")
            self.registered = False

    def flush(self) -> int:
        """Send the buffered events; returns the batches delivered (0 when none or it failed)."""
        delivered = 0
        while True:
            batches = self.events.take(time.time(), max_batches=self.max_batches_per_request)
            if not batches:
                return delivered
            if self.legacy:
                status = self._post_legacy(batches)
            else:
                status, _ = self._call("POST", "/events", {"batches": [batch_to_json(b) for b in batches]})
                if status == 404:
                    log.info("coordinator %s has no POST /events: reporting L2 events to /l2/events (LMCache 0.5.0)", self.url)
                    self.legacy = True
                    status = self._post_legacy(batches)
            if status is None or not 200 <= status < 300:
                self.events.failed(batches)
                return delivered
            self.events.sent(batches)
            delivered += len(batches)

    def _post_legacy(self, batches: Sequence[EventBatch]) -> int | None:
        """0.5.0's form: L2 stores, lookups and deletes in one report; L1 events and capacity
        declarations have no place there and are counted as unreported."""
        events = []
        for batch in batches:
            if batch.tier != Tier.L2 or batch.capacity is not None:
                self.unreported_events += len(batch.entries)
                continue
            for entry in batch.entries:
                kind = _LEGACY_TYPES[entry.op]
                events.append({"type": kind, "key": entry.key.to_json(), "bytes": entry.size_bytes if kind == "store" else 0})
        if not events:
            return 200
        self._legacy_seq += 1
        status, _ = self._call("POST", "/l2/events", {"instance_id": self.instance_id, "seq": self._legacy_seq, "events": events})
        return status

    def _call(self, method: str, path: str, body: Any = None) -> tuple[int | None, Any]:
        try:
            status, reply = self.http.call(method, self.url, path, body)
        except ServerUnreachable as exc:
            self.failed_calls += 1
            self.last_error = str(exc)
            return None, None
        if status >= 400 and status != 404:
            self.failed_calls += 1
            self.last_error = f"{method} {path}: {error_text(status, reply)}"
        return status, reply

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lmcache-coordinator-client", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if now >= self._next_heartbeat:
                    self._next_heartbeat = now + self.heartbeat_interval
                    if self._on_heartbeat is not None:
                        try:
                            self._on_heartbeat()
                        except Exception:
                            log.exception("coordinator client heartbeat hook failed")
                    if not self.registered:
                        self.register()
                    else:
                        self.heartbeat()
                if self.registered:
                    self.flush()
            except Exception:  # never let the reporting thread die
                log.exception("coordinator client iteration failed")
            self._wake.wait(self.flush_interval)
            self._wake.clear()

    def stop(self, timeout: float = 5.0) -> None:
        """Flush what is buffered (best effort), deregister, stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.registered:
            self.flush()
        self.deregister()
        self.http.close()

    def status(self) -> dict[str, Any]:
        """The `coordinator` block of the server's status (never unhealthy: reporting is best effort)."""
        return {
            "url": self.url,
            "instance_id": self.instance_id,
            "incarnation": self.incarnation,
            "registered": self.registered,
            "registrations": self.registrations,
            "failed_calls": self.failed_calls,
            "last_error": self.last_error,
            "legacy_coordinator": self.legacy,
            "unreported_events": self.unreported_events,
            **self.events.stats(),
            "is_healthy": True,
        }
