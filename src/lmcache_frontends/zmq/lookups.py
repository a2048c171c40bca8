"""Lookups and sessions: find a cached prefix and hold it for the retrieves, report, release, end.

The rules (which locks a lookup takes, whose lease a retrieve consumes, caps per client) are the
core's `DataPath` and `LeaseTable`; these handlers only turn typed requests into its calls.
"""

from __future__ import annotations

from lmcache_core.clients import ClientId
from lmcache_core.lookup import DataPath
from lmcache_frontends.zmq.requests import (
    EndSession,
    FreeLookupLocks,
    Lookup,
    QueryPrefetchLookupHits,
    QueryPrefetchStatus,
    WaitPrefetchStatus,
)

MAX_WAIT_SECONDS = 300.0
_MAX_TP_SIZE = 1 << 16


def _tp(value: int) -> int:
    # A nonsensical tensor-parallel size reads as 1 (no extra locks), as it always did.
    return value if 0 < value <= _MAX_TP_SIZE else 1


class LookupHandlers:
    """LOOKUP, the prefetch status queries, FREE_LOOKUP_LOCKS and END_SESSION."""

    def __init__(self, data_path: DataPath) -> None:
        self.data_path = data_path

    def lookup(self, client: ClientId, req: Lookup) -> None:
        self.data_path.lookup(req.key, _tp(req.tp_size), client, readers=req.readers)

    def query(self, client: ClientId, req: QueryPrefetchStatus) -> int | None:
        return self.data_path.query(req.request_id, client)[1]

    def wait(self, client: ClientId, req: WaitPrefetchStatus) -> int | None:
        timeout = req.timeout if req.timeout == req.timeout else 0.0  # NaN waits not at all
        return self.data_path.wait(req.request_id, min(max(0.0, timeout), MAX_WAIT_SECONDS), client)

    def lookup_hits(self, client: ClientId, req: QueryPrefetchLookupHits) -> int | None:
        return self.data_path.lookup_hits(req.request_id, client)

    def free_lookup_locks(self, client: ClientId, req: FreeLookupLocks) -> None:
        self.data_path.free_lookup_locks(req.key, _tp(req.tp_size), client, readers=req.readers)

    def end_session(self, client: ClientId, req: EndSession) -> None:
        self.data_path.end_session(req.request_id, client)
