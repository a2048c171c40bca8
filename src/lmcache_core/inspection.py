"""Request inspection: which chunks (and keys) a live or recently ended request has, answered
from whatever data path registered its sessions, so admin routes never reach into a frontend."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from lmcache_core.errors import NotFoundError
from lmcache_core.keys import ObjectKey, request_keys
from lmcache_core.sessions import RequestSnapshot


@runtime_checkable
class RequestSource(Protocol):
    """What a data path offers inspection: a snapshot of a request by id (SessionManager has it)."""

    def snapshot(self, request_id: str) -> RequestSnapshot | None: ...


@dataclass(frozen=True)
class InspectedChunk:
    """One chunk of a request for one rank: its index, token range and key."""

    index: int
    token_start: int
    token_end: int
    key: ObjectKey


@dataclass(frozen=True)
class InspectedRequest:
    """A request and the chunks of it within the asked token bounds (every rank, chunk-major)."""

    request_id: str
    state: str
    model_name: str
    cache_salt: str
    world_size: int
    chunk_size: int
    total_chunks: int
    chunks: list[InspectedChunk]


class RequestInspector:
    """Finds requests in the sessions the data paths registered (`attach`, `detach` at stop).
    With none attached, every lookup is NotFoundError saying no data path runs. Thread-safe."""

    def __init__(self, chunk_size: int) -> None:
        self._chunk_size = int(chunk_size)
        self._lock = threading.Lock()
        self._sources: list[RequestSource] = []

    def attach(self, source: RequestSource) -> None:
        with self._lock:
            if source not in self._sources:
                self._sources.append(source)

    def detach(self, source: RequestSource) -> None:
        with self._lock:
            if source in self._sources:
                self._sources.remove(source)

    @property
    def attached(self) -> bool:
        with self._lock:
            return bool(self._sources)

    def find(self, request_id: str, start: int = 0, end: int | None = None) -> InspectedRequest:
        """The request's chunks overlapping tokens [start, end) (end None: to the last chunk).
        NotFoundError when no data path runs or none knows the request; ValueError for bounds
        where end <= start or either is negative."""
        if start < 0 or (end is not None and end < 0):
            raise ValueError(f"token bounds must be >= 0, got start={start}, end={end}")
        if end is not None and end <= start:
            raise ValueError(f"end ({end}) must be greater than start ({start})")
        with self._lock:
            sources = list(self._sources)
        if not sources:
            raise NotFoundError("the ZeroMQ data path is not running: no request is known")
        snap = next((s for s in (src.snapshot(request_id) for src in sources) if s is not None), None)
        if snap is None:
            raise NotFoundError(f"request {request_id!r} is neither live nor among the recently ended requests")
        size = self._chunk_size
        chunks: list[InspectedChunk] = []
        for i, chunk_hash in enumerate(snap.chunk_hashes):
            lo, hi = i * size, (i + 1) * size
            if hi <= start or (end is not None and lo >= end):
                continue
            keys = request_keys(snap.model_name, snap.world_size, snap.cache_salt, [chunk_hash])
            chunks.extend(InspectedChunk(i, lo, hi, key) for key in keys)
        return InspectedRequest(
            request_id, snap.state, snap.model_name, snap.cache_salt, snap.world_size, size, len(snap.chunk_hashes), chunks
        )
