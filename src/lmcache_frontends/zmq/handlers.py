"""The data path's handlers: typed request + client identity in, typed result out.

Handlers know nothing of wire numbers, payload positions or protocol versions (the codecs do):
each receives one of `requests.py`'s requests and the `ClientId` that sent it. They are grouped by
concern (registrations in `instances.py`, lookups and sessions in `lookups.py`, engine-driven
transfers in `engine_driven.py`, server-driven ones in `server_driven.py`); this module joins them
into one table by request type and adds the small operations (chunk size, ping, clear, ...).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from lmcache_core.clients import ClientId
from lmcache_core.ratelimit import LogRateLimiter
from lmcache_frontends.zmq import requests as rq
from lmcache_frontends.zmq.engine_driven import EngineDrivenHandlers
from lmcache_frontends.zmq.instances import InstanceRegistry, RequestFailed
from lmcache_frontends.zmq.lookups import LookupHandlers
from lmcache_frontends.zmq.server_driven import ServerDrivenHandlers

log = logging.getLogger(__name__)

Handler = Callable[[ClientId, Any], Any]

TRANSFER_MODES = ("auto", "engine_driven", "lmcache_driven")


class DataPathHandlers:
    """One handler per request type; `handle` runs the one of a request (RequestFailed, or any
    error a handler raises, makes the caller answer with the request's failure value)."""

    def __init__(
        self,
        *,
        registry: InstanceRegistry,
        lookups: LookupHandlers,
        engine_driven: EngineDrivenHandlers,
        server_driven: ServerDrivenHandlers,
        clear_l1: Callable[..., int],
        chunk_size: int,
        transfer_mode: str,
        log_limiter: LogRateLimiter,
    ) -> None:
        if transfer_mode not in TRANSFER_MODES:
            raise ValueError(f"supported_transfer_mode must be one of {', '.join(TRANSFER_MODES)}, not {transfer_mode!r}")
        self.registry = registry
        self.transfer_mode = transfer_mode
        self._clear_l1 = clear_l1
        self._chunk_size = chunk_size
        self._log_limiter = log_limiter
        self.not_supported_total = 0
        table: dict[type[rq.Request], Handler] = {
            rq.GetChunkSize: lambda c, r: self._chunk_size,
            rq.Noop: lambda c, r: "OK",
            rq.Ping: self._ping,
            rq.GetCapabilities: lambda c, r: (),  # no optional feature (KV-event streams, query transfer)
            rq.Clear: self._clear,
            rq.ReportBlockAllocation: lambda c, r: None,  # observability only
            rq.StreamControl: lambda c, r: rq.NoReply(),  # no stream is ever opened
            rq.NotSupported: self._not_supported,
            rq.UnregisterKVCache: self._unregister,
            rq.UnregisterEngineDrivenContext: self._unregister,
            rq.RegisterEngineDrivenContext: engine_driven.register,
            rq.Lookup: lookups.lookup,
            rq.QueryPrefetchStatus: lookups.query,
            rq.WaitPrefetchStatus: lookups.wait,
            rq.QueryPrefetchLookupHits: lookups.lookup_hits,
            rq.FreeLookupLocks: lookups.free_lookup_locks,
            rq.EndSession: lookups.end_session,
        }
        if transfer_mode != "lmcache_driven":
            table.update({
                rq.PrepareStore: engine_driven.prepare_store,
                rq.CommitStore: engine_driven.commit_store,
                rq.PrepareRetrieve: engine_driven.prepare_retrieve,
                rq.CommitRetrieve: engine_driven.commit_retrieve,
            })
        if transfer_mode != "engine_driven":
            table.update({
                rq.RegisterKVCache: server_driven.register,
                rq.Store: server_driven.store,
                rq.Retrieve: server_driven.retrieve,
            })
        self._table = table

    def handle(self, client: ClientId, request: rq.Request) -> Any:
        handler = self._table.get(type(request))
        if handler is None:
            raise RequestFailed(
                f"{type(request).__name__} is not served with --supported-transfer-mode {self.transfer_mode}"
            )
        return handler(client, request)

    # -- the small operations ---------------------------------------------------------------

    def _ping(self, client: ClientId, req: rq.Ping) -> bool:
        self.registry.ping(client, req.instance_id)
        # The server is up: that is what PING answers (vLLM re-registers on a false -> true edge).
        return True

    def _clear(self, client: ClientId, req: rq.Clear) -> None:
        # force: also objects held by lookups or copies in flight (their promises are voided,
        # their memory freed once the copy ends); without it those stay.
        self._clear_l1(force=req.force)

    def _unregister(self, client: ClientId, req: rq.UnregisterKVCache | rq.UnregisterEngineDrivenContext) -> None:
        if not self.registry.drop(client, req.instance_id, "unregistered"):
            raise RequestFailed(f"unregister of unknown instance_id {req.instance_id}")

    def _not_supported(self, client: ClientId, req: rq.NotSupported) -> None:
        # Answered by the codec with what the client reads as "not supported"; said once per
        # client and operation every few seconds, so an engine that asks every step is quiet.
        self.not_supported_total += 1
        emit, held = self._log_limiter.allow((client, "not supported", req.operation))
        if emit:
            log.info(
                "client %s asked for %s (%s), which this server does not implement; answered as not supported%s",
                client.hex() or "-", req.operation, req.feature, f" [{held} similar lines suppressed]" if held else "",
            )
