"""Sessions: per-request token sequences with incrementally computed chunk hashes, and a TTL reaper."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.clients import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_SESSIONS_PER_CLIENT,
    LOCAL_CLIENT,
    ClientId,
)
from lmcache_core.hashing import IncrementalHasher, TokenBytes, TokenHasher
from lmcache_core.keys import ObjectKey, request_keys, validate_cache_salt, validate_model_name
from lmcache_core.ports import Clock

DEFAULT_SESSION_TTL_SECONDS = 600.0
DEFAULT_MAX_ENDED_SESSIONS = 4096
# Token sequences (as TokenBytes) whose hashes a new session may adopt instead of hashing again.
DEFAULT_MAX_KNOWN_SEQUENCES = 64


@dataclass
class Session:
    """One request's state: the hash chain of its tokens, its namespace and when it was last used."""

    request_id: str
    model_name: str
    world_size: int
    cache_salt: str
    hasher: IncrementalHasher
    created_at: float
    last_used: float
    owner: ClientId = LOCAL_CLIENT
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass(frozen=True)
class EndedSession:
    """What is remembered about a request after its session ended (for the per-request CLI)."""

    request_id: str
    model_name: str
    world_size: int
    cache_salt: str
    chunk_hashes: tuple[bytes, ...]
    ended_at: float
    reason: str

    def keys(self) -> list[ObjectKey]:
        """Chunk-major keys of every rank of the request."""
        # Validate the namespace once instead of once per key.
        validate_model_name(self.model_name)
        validate_cache_salt(self.cache_salt)
        return request_keys(self.model_name, self.world_size, self.cache_salt, self.chunk_hashes)


@dataclass(frozen=True)
class RequestSnapshot:
    """A request as the data path knows it at one instant (live or recently ended)."""

    request_id: str
    state: str  # live | ended | expired | dropped
    model_name: str
    world_size: int
    cache_salt: str
    chunk_hashes: tuple[bytes, ...]


class SessionManager:
    """Request id -> Session. Hashes are computed once per new chunk of a session (engines resend
    the whole sequence on every call). Sessions expire `ttl_seconds` after their last use and
    `reap()` really removes them; a bounded, most-recent-first record of ended requests stays
    behind. At most `max_sessions` live at once, and at most `max_sessions_per_client` created
    by one client: past either, the least recently used one (of that client) is dropped (a
    session only saves hashing; a dropped one is rebuilt on its next use). Thread-safe."""

    def __init__(
        self,
        hasher: TokenHasher,
        *,
        clock: Clock,
        ttl_seconds: float = DEFAULT_SESSION_TTL_SECONDS,
        max_ended: int = DEFAULT_MAX_ENDED_SESSIONS,
        max_known_sequences: int = DEFAULT_MAX_KNOWN_SEQUENCES,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_sessions_per_client: int = DEFAULT_MAX_SESSIONS_PER_CLIENT,
    ) -> None:
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds!r}")
        if max_ended < 0:
            raise ValueError(f"max_ended must be >= 0, got {max_ended!r}")
        self._hasher = hasher
        self._clock = clock
        self._ttl = float(ttl_seconds)
        self._max_ended = max_ended
        self._lock = threading.Lock()
        # Least recently used first, overall and per creating client.
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._per_client: dict[ClientId, OrderedDict[str, None]] = {}
        self._max_sessions = max(1, int(max_sessions))
        self._max_per_client = max(1, int(max_sessions_per_client))
        self._dropped_total = 0
        self._ended: OrderedDict[str, EndedSession] = OrderedDict()
        self._max_known = max(0, int(max_known_sequences))
        self._known: OrderedDict[TokenBytes, tuple[bytes, ...]] = OrderedDict()
        self.adopted_total = 0
        self._expired_total = 0
        self._ended_total = 0

    @property
    def ttl_seconds(self) -> float:
        return self._ttl

    @property
    def hasher(self) -> TokenHasher:
        return self._hasher

    def chunk_hashes(
        self,
        request_id: str,
        token_ids: Sequence[int] | Any,
        *,
        model_name: str,
        world_size: int,
        cache_salt: str = "",
        client: ClientId = LOCAL_CLIENT,
    ) -> list[bytes]:
        """Hashes of every full chunk of `token_ids` (the whole sequence from token 0), using and
        refreshing the session `request_id` (created by `client` when new); only chunks not
        hashed before are hashed."""
        now = self._clock.monotonic()
        with self._lock:
            session = self._sessions.get(request_id)
            if session is None or (session.model_name, session.world_size, session.cache_salt) != (
                model_name,
                world_size,
                cache_salt,
            ):
                if session is not None:
                    self._unindex(session)
                session = Session(
                    request_id, model_name, world_size, cache_salt, self._hasher.incremental(), now, now, client
                )
                self._sessions[request_id] = session
                self._per_client.setdefault(client, OrderedDict())[request_id] = None
                self._enforce_caps(client)
            else:
                self._sessions.move_to_end(request_id)
                mine = self._per_client.get(session.owner)
                if mine is not None and request_id in mine:
                    mine.move_to_end(request_id)
            session.last_used = now
        # Only a session's first sequence is looked up in (and added to) the table of known
        # ones: a session resending its tokens is answered from its own hasher, without hashing
        # the whole token array (~45 us for 32k tokens) for a table lookup.
        fresh: TokenBytes | None = None
        if isinstance(token_ids, TokenBytes) and self._max_known > 0 and session.hasher.num_tokens == 0:
            fresh = token_ids
        known = None
        if fresh is not None:
            with self._lock:
                known = self._known.get(fresh)
                if known is not None:
                    self._known.move_to_end(fresh)
        # Hash outside the manager lock so sessions of other requests proceed in parallel.
        with session.lock:
            if known is not None and isinstance(token_ids, TokenBytes) and session.hasher.num_tokens == 0:
                # Another request sent the same tokens (hashes depend on the tokens only).
                session.hasher.adopt(token_ids, known)
                self.adopted_total += 1
                return list(known)
            hashes = session.hasher.update_to(token_ids)
        if fresh is not None and known is None:
            with self._lock:
                self._known[fresh] = tuple(hashes)
                while len(self._known) > self._max_known:
                    self._known.popitem(last=False)
        return hashes

    def get(self, request_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(request_id)

    def end(self, request_id: str) -> EndedSession | None:
        """End a session; returns its record (None for an unknown id)."""
        with self._lock:
            session = self._sessions.pop(request_id, None)
            if session is None:
                return None
            self._unindex(session)
            self._ended_total += 1
            return self._record(session, "ended")

    def reap(self) -> list[EndedSession]:
        """Remove sessions unused for `ttl_seconds`; returns their records."""
        now = self._clock.monotonic()
        with self._lock:
            expired = []
            # Least recently used first: stop at the first one still in use.
            for session in self._sessions.values():
                if now - session.last_used < self._ttl:
                    break
                expired.append(session)
            records = []
            for session in expired:
                del self._sessions[session.request_id]
                self._unindex(session)
                records.append(self._record(session, "expired"))
            self._expired_total += len(expired)
            return records

    def count(self, client: ClientId | None = None) -> int:
        """Live sessions (created by `client`, when given)."""
        with self._lock:
            if client is None:
                return len(self._sessions)
            return len(self._per_client.get(client, ()))

    def _unindex(self, session: Session) -> None:
        mine = self._per_client.get(session.owner)
        if mine is not None:
            mine.pop(session.request_id, None)
            if not mine:
                del self._per_client[session.owner]

    def _enforce_caps(self, client: ClientId) -> None:
        """Drop least recently used sessions past the caps (the caller holds the lock)."""
        mine = self._per_client.get(client)
        while mine is not None and len(mine) > self._max_per_client:
            self._drop(self._sessions[next(iter(mine))])
            mine = self._per_client.get(client)
        while len(self._sessions) > self._max_sessions:
            self._drop(next(iter(self._sessions.values())))

    def _drop(self, session: Session) -> None:
        del self._sessions[session.request_id]
        self._unindex(session)
        self._dropped_total += 1
        self._record(session, "dropped")

    def snapshot(self, request_id: str) -> RequestSnapshot | None:
        """What is known of `request_id` now: its live session (state "live") or its record among
        the recently ended ones (state "ended", "expired" or "dropped"); None when neither."""
        live = self.get(request_id)
        if live is not None:
            with live.lock:  # the hasher is extended under this lock by the data path
                hashes = tuple(live.hasher.hashes)
            return RequestSnapshot(request_id, "live", live.model_name, live.world_size, live.cache_salt, hashes)
        ended = self.recent(request_id)
        if ended is None:
            return None
        return RequestSnapshot(
            request_id, ended.reason, ended.model_name, ended.world_size, ended.cache_salt, ended.chunk_hashes
        )

    def recent(self, request_id: str) -> EndedSession | None:
        """The record of a recently ended (or expired) request, if still remembered."""
        with self._lock:
            return self._ended.get(request_id)

    def active_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "is_healthy": True,
                "active_sessions": len(self._sessions),
                "remembered_ended_sessions": len(self._ended),
                "ended_sessions_total": self._ended_total,
                "expired_sessions_total": self._expired_total,
                "dropped_sessions_total": self._dropped_total,
                "max_sessions": self._max_sessions,
                "max_sessions_per_client": self._max_per_client,
                "session_ttl_seconds": self._ttl,
            }

    def _record(self, session: Session, reason: str) -> EndedSession:
        # Called with self._lock held; the session is already out of the table, so its hasher
        # is only touched by a caller that fetched it before, which holds session.lock.
        with session.lock:
            hashes = tuple(session.hasher.hashes)
        record = EndedSession(
            session.request_id,
            session.model_name,
            session.world_size,
            session.cache_salt,
            hashes,
            self._clock.time(),
            reason,
        )
        if self._max_ended:
            self._ended.pop(session.request_id, None)
            self._ended[session.request_id] = record
            while len(self._ended) > self._max_ended:
                self._ended.popitem(last=False)
        return record
