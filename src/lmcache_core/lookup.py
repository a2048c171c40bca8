"""The data path's domain logic: object layouts, LOOKUP jobs, lookup leases, store/retrieve reservations.

Every call that takes or releases something names the client it comes from (`ClientId`, the
ZeroMQ identity): LOOKUP jobs and their lock leases, pending PREPARE_STORE reservations and
PREPARE_RETRIEVE copies belong to that client (and instance), and another client can neither
commit, release nor reuse them. Retrieves consume from the lease of the request their key
names (see `lmcache_core.leases`)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lmcache_core.clients import LOCAL_CLIENT, ClientId, ClientLimits
from lmcache_core.errors import InvalidKeyError, RegistrationError
from lmcache_core.hashing import TokenBytes
from lmcache_core.keys import ObjectKey, request_keys, validate_cache_salt, validate_model_name
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult, WriteMode
from lmcache_core.leases import Lease, LeaseTable, ReadTicket
from lmcache_core.metric_names import LOOKUP_HIT_TOKENS, LOOKUP_REQUESTS, LOOKUP_TOKENS
from lmcache_core.ports import Clock, MemoryHandle, MetricsSink, NullMetricsSink
from lmcache_core.sessions import DEFAULT_SESSION_TTL_SECONDS, SessionManager

if TYPE_CHECKING:
    from lmcache_core.engine import CacheEngine

log = logging.getLogger(__name__)

# A job nobody queried is dropped after this long (its locks expire with the L1 read TTL).
DEFAULT_JOB_TTL_SECONDS = 600.0
# Recent key lists (engines look the same request up repeatedly, then store and retrieve it):
# reusing the same ObjectKey objects also makes L1 table lookups hit on identity.
_KEY_CACHE_ENTRIES = 256


def token_count(tokens: Any) -> int:
    """How many token ids `tokens` holds (TokenBytes carry 4 bytes per token); 0 when unknown."""
    if isinstance(tokens, TokenBytes):
        return len(tokens) // 4
    try:
        return len(tokens)
    except TypeError:
        return 0


class PrefetchJobLike(Protocol):
    """What the L2 prefetch controller returns for a submitted key run."""

    @property
    def done(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...

    @property
    def loaded_count(self) -> int: ...

    @property
    def l2_hit_count(self) -> int | None: ...

    @property
    def locked_handles(self) -> Sequence[MemoryHandle]:
        """Once done: the exact objects of the `loaded_count` keys it read-locked (promises)."""
        ...

    def add_done_callback(self, fn: Callable[[Any], None]) -> None: ...

    def cancel(self) -> None: ...


class PrefetcherLike(Protocol):
    """`StorageManager.prefetch`: loads the leading run of L2 hits into read-locked L1 objects."""

    def submit(
        self, keys: Sequence[ObjectKey], *, object_size: int, group_size: int = 1, extra_read_count: int = 0
    ) -> PrefetchJobLike: ...


@dataclass(frozen=True)
class RequestKey:
    """The engine's key of a token range (`IPCCacheServerKey` on the wire); request_id is not
    part of its identity."""

    model_name: str
    world_size: int
    worker_id: int | None
    token_ids: Any
    start: int
    end: int
    request_id: str
    cache_salt: str = ""

    def __post_init__(self) -> None:
        validate_model_name(self.model_name)
        validate_cache_salt(self.cache_salt)
        for name in ("world_size", "start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidKeyError(f"{name} must be a non-negative integer, got {value!r}")
        if not 1 <= self.world_size <= 255:
            raise InvalidKeyError(f"world_size must be in 1..255, got {self.world_size}")
        if self.worker_id is not None and (
            isinstance(self.worker_id, bool)
            or not isinstance(self.worker_id, int)
            or not 0 <= self.worker_id < self.world_size
        ):
            raise InvalidKeyError(f"worker_id must be in 0..world_size-1 or nil, got {self.worker_id!r}")
        if self.start > self.end:
            raise InvalidKeyError(f"start {self.start} is after end {self.end}")
        if not isinstance(self.request_id, str):
            raise InvalidKeyError("request_id must be a string")

    def identity(self, chunk_hash: bytes | None) -> tuple[Any, ...]:
        """What two keys must share to be the same (request_id ignored); `chunk_hash` stands for
        the tokens (the hash of the last chunk of the range identifies the whole prefix)."""
        return (self.model_name, self.world_size, self.worker_id, self.start, self.end, self.cache_salt, chunk_hash)


@dataclass
class ObjectLayout:
    """The L1 object size of one (model_name, world_size), shared by registrations (ref-counted)."""

    object_size: int
    refs: int = 1


@dataclass
class LookupJob:
    """A LOOKUP in progress: the locked L1 prefix and, maybe, an L2 prefetch of the remainder."""

    request_id: str
    world_size: int
    l1_chunks: int
    total_chunks: int
    prefetch: PrefetchJobLike | None
    created_at: float
    l2_hits_known: bool = field(default=False)
    model_name: str = ""
    cache_salt: str = ""
    owner: ClientId = LOCAL_CLIENT

    @property
    def done(self) -> bool:
        return self.prefetch is None or self.prefetch.done

    def hit_chunks(self) -> int:
        if self.prefetch is None:
            return self.l1_chunks
        return self.l1_chunks + self.prefetch.loaded_count // self.world_size

    def lookup_hits(self) -> int | None:
        if self.prefetch is None:
            return self.l1_chunks
        l2 = self.prefetch.l2_hit_count
        if l2 is None:
            return None
        return self.l1_chunks + l2 // self.world_size


@dataclass(frozen=True)
class TransferKeys:
    """The L1 keys of one rank's transfer of a RequestKey, and what names its pending entry
    (the key's identity: request_id ignored, the last chunk hash standing for the tokens)."""

    keys: list[ObjectKey]
    identity: tuple[Any, ...]


@dataclass
class _PendingWrite:
    keys: list[ObjectKey]
    handles: list[MemoryHandle]
    nbytes: int
    started: float | None
    expires: float


@dataclass
class _PendingRead:
    ticket: ReadTicket
    started: float | None


PendingId = tuple[ClientId, int, tuple[Any, ...]]
"""(client, instance_id, key identity): one engine-driven transfer waiting for its COMMIT."""


class DataPath:
    """LOOKUP / prefetch jobs / FREE_LOOKUP_LOCKS / END_SESSION and the L1 side of stores and
    retrieves, in key terms. Lock counts follow LMCache 0.5.0: LOOKUP read-locks each present key
    of the leading run `1 + extra` times (`extra = tp_size - 1` when tp_size > world_size, the MLA
    case where several tensor-parallel ranks read one KV rank), each retrieve consumes one. The
    locks are promises held in the lease of (client, request_id); see `lmcache_core.leases`."""

    @classmethod
    def for_engine(
        cls,
        engine: CacheEngine,
        *,
        clock: Clock,
        session_ttl_seconds: float = DEFAULT_SESSION_TTL_SECONDS,
        limits: ClientLimits | None = None,
        metrics: MetricsSink | None = None,
    ) -> DataPath:
        """The data path over `engine`'s L1 and prefetcher, with its own SessionManager (the
        engine's hasher, `session_ttl_seconds`, the session caps of `limits`). The composition
        root builds the server's with it; a data-path frontend built alone does too."""
        limits = limits if limits is not None else ClientLimits()
        sessions = SessionManager(
            engine.hasher, clock=clock, ttl_seconds=session_ttl_seconds,
            max_sessions=limits.max_sessions, max_sessions_per_client=limits.max_sessions_per_client,
        )
        storage = engine.storage
        return cls(storage.l1, sessions, clock=clock, prefetcher=storage.prefetch, metrics=metrics, limits=limits)

    def __init__(
        self,
        l1: L1Manager,
        sessions: SessionManager,
        *,
        clock: Clock,
        prefetcher: PrefetcherLike | None = None,
        job_ttl_seconds: float = DEFAULT_JOB_TTL_SECONDS,
        metrics: MetricsSink | None = None,
        limits: ClientLimits | None = None,
    ) -> None:
        self.l1 = l1
        self.metrics: MetricsSink = metrics if metrics is not None else NullMetricsSink()
        self.sessions = sessions
        self.chunk_size = sessions.hasher.chunk_size
        self.limits = limits if limits is not None else ClientLimits()
        self._clock = clock
        self._prefetcher = prefetcher
        self._job_ttl = job_ttl_seconds
        self._lock = threading.Lock()
        self._layouts: dict[tuple[str, int], ObjectLayout] = {}
        self._jobs: OrderedDict[tuple[ClientId, str], LookupJob] = OrderedDict()
        self._jobs_per_client: dict[ClientId, OrderedDict[str, None]] = {}
        self._key_cache: OrderedDict[tuple[Any, ...], tuple[list[bytes], list[ObjectKey]]] = OrderedDict()
        self._job_done = threading.Condition(self._lock)
        self.leases = LeaseTable(
            l1, clock=clock, max_per_client=self.limits.max_lookups_per_client, max_total=self.limits.max_sessions
        )
        self._pending_write_cap = self.limits.pending_write_cap(l1.pool.capacity_bytes)
        self._writes: dict[PendingId, _PendingWrite] = {}
        self._write_bytes: dict[ClientId, int] = {}
        self._reads: dict[PendingId, _PendingRead] = {}
        self.lookups_total = 0
        self.lookup_hit_chunks_total = 0
        self.jobs_dropped_total = 0
        self.pending_write_refusals_total = 0

    # -- layouts --------------------------------------------------------------------------

    def check_object_size(self, object_size: int) -> None:
        """RegistrationError unless one object of `object_size` bytes can fit in L1 at all (a
        registration that cannot is refused up front: its stores would only ever fail, after
        asking the reclaimer to evict everyone else's objects)."""
        capacity = self.l1.pool.capacity_bytes
        if isinstance(object_size, bool) or not isinstance(object_size, int) or object_size <= 0:
            raise RegistrationError(f"object size must be a positive integer, got {object_size!r}")
        if object_size > capacity:
            raise RegistrationError(
                f"one KV chunk of this registration takes {object_size} bytes, more than the whole "
                f"L1 pool ({capacity} bytes)"
            )

    def register_layout(self, model_name: str, world_size: int, object_size: int) -> None:
        """Add a reference to the layout of (model, world_size); the latest size wins.
        RegistrationError when an object of that size cannot fit in L1."""
        self.check_object_size(object_size)
        with self._lock:
            layout = self._layouts.get((model_name, world_size))
            if layout is None:
                self._layouts[(model_name, world_size)] = ObjectLayout(object_size)
            else:
                layout.object_size = object_size
                layout.refs += 1

    def unregister_layout(self, model_name: str, world_size: int) -> None:
        with self._lock:
            layout = self._layouts.get((model_name, world_size))
            if layout is None:
                return
            layout.refs -= 1
            if layout.refs <= 0:
                del self._layouts[(model_name, world_size)]

    def object_size(self, model_name: str, world_size: int) -> int | None:
        with self._lock:
            layout = self._layouts.get((model_name, world_size))
            return None if layout is None else layout.object_size

    def layouts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                f"{model}@{ws}": {"object_size": lay.object_size, "registrations": lay.refs}
                for (model, ws), lay in self._layouts.items()
            }

    # -- keys -----------------------------------------------------------------------------

    def checktoken_count(self, key: RequestKey) -> None:
        """InvalidKeyError when the key holds more token ids than `max_tokens_per_key`."""
        n = token_count(key.token_ids)
        if n > self.limits.max_tokens_per_key:
            raise InvalidKeyError(
                f"the key holds {n} token ids, more than the {self.limits.max_tokens_per_key} allowed "
                "(--max-tokens-per-key)"
            )

    def chunk_hashes(self, key: RequestKey, client: ClientId = LOCAL_CLIENT) -> list[bytes]:
        """Hashes of every full chunk of the key's tokens (through its session)."""
        self.checktoken_count(key)
        return self.sessions.chunk_hashes(
            key.request_id, key.token_ids, model_name=key.model_name, world_size=key.world_size,
            cache_salt=key.cache_salt, client=client,
        )

    def range_hashes(self, key: RequestKey, client: ClientId = LOCAL_CLIENT) -> list[bytes]:
        """Hashes of the chunks of [start, end); InvalidKeyError when unaligned or beyond the tokens."""
        c = self.chunk_size
        if key.start % c or key.end % c:
            raise InvalidKeyError(f"start {key.start} and end {key.end} must be multiples of {c}")
        hashes = self.chunk_hashes(key, client)
        if key.end // c > len(hashes):
            raise InvalidKeyError(f"end {key.end} is beyond the {len(hashes) * c} tokens of full chunks")
        return hashes[key.start // c : key.end // c]

    def transfer_keys(self, key: RequestKey, client: ClientId = LOCAL_CLIENT) -> TransferKeys:
        """The keys of a STORE/RETRIEVE/PREPARE/COMMIT (one rank: worker_id is required)."""
        if key.worker_id is None:
            raise InvalidKeyError("worker_id is required for transfers")
        hashes = self.range_hashes(key, client)
        return TransferKeys(self.keys_of(key, hashes, key.worker_id), key.identity(hashes[-1] if hashes else None))

    def keys_of(self, key: RequestKey, hashes: Sequence[bytes], rank: int | None = None) -> list[ObjectKey]:
        """Chunk-major ObjectKeys of `hashes`, for one rank or (None) every rank (a new list;
        the keys themselves are shared with earlier calls for the same chunks)."""
        return self._keys(key.model_name, key.world_size, key.cache_salt, hashes, rank)

    def _keys(
        self, model_name: str, world_size: int, cache_salt: str, hashes: Sequence[bytes], rank: int | None
    ) -> list[ObjectKey]:
        # The same key objects for the same chunks on every call: L1's tables then match them
        # on identity instead of comparing fields in Python (`ObjectKey.__eq__`).
        if not hashes:
            return []
        if world_size == 1:
            rank = 0  # every rank and rank 0 are the same keys: share them with stores
        hashes = hashes if isinstance(hashes, list) else list(hashes)
        ident = (model_name, world_size, rank, cache_salt, len(hashes), hashes[-1])
        with self._lock:
            cached = self._key_cache.get(ident)
            if cached is not None:
                self._key_cache.move_to_end(ident)
        # Compared in full so a reused list never rests on the last hash alone.
        if cached is not None and cached[0] == hashes:
            return list(cached[1])
        keys = request_keys(model_name, world_size, cache_salt, hashes, rank)
        with self._lock:
            self._key_cache[ident] = (hashes.copy(), keys)
            while len(self._key_cache) > _KEY_CACHE_ENTRIES:
                self._key_cache.popitem(last=False)
        return list(keys)

    # -- lookup ---------------------------------------------------------------------------

    @staticmethod
    def extra_locks(tp_size: int, world_size: int, readers: int = 0) -> int:
        """Extra read locks per key (beyond one): MLA engines run tp_size readers over
        world_size KV ranks (0.5.0's rule); a client that says how many workers will read each
        object (LMCache 0.5.6's `num_kv_readers`, >= 1) gets at least that many locks. The
        larger of the two: too many locks only hold an object until the lease lapses or is
        freed, too few would fail a rank's retrieve."""
        from_tp = tp_size - 1 if tp_size > world_size else 0
        return max(from_tp, readers - 1)

    def lookup(
        self, key: RequestKey, tp_size: int = 1, client: ClientId = LOCAL_CLIENT, *, readers: int = 0
    ) -> LookupJob:
        """Lock the leading run of L1 hits over all full chunks (start/end ignored, as 0.5.0
        does) as promises in the lease (client, request_id), `1 + extra_locks(...)` per key,
        hand the rest to the L2 prefetcher, and record the job under (client, request_id)."""
        ws = key.world_size
        now = self._clock.monotonic()
        object_size = self.object_size(key.model_name, ws)
        if object_size is None:
            self.checktoken_count(key)
            job = LookupJob(key.request_id, ws, 0, 0, None, now, owner=client)
            self._put_job(job)
            self._report_lookup(key, token_count(key.token_ids) // self.chunk_size, 0)
            return job
        hashes = self.chunk_hashes(key, client)
        keys = self.keys_of(key, hashes)
        extra = self.extra_locks(tp_size, ws, readers)
        # Only the leading run of whole chunks (every rank) is locked: past a hole the engine
        # cannot use a chunk. An object of another size under the same key was stored under an
        # earlier layout of this model name: it cannot be served to this engine, so it is a miss.
        handles = (
            self.l1.lock_read_prefix(keys, extra, nbytes=object_size, group=ws, promise=True) if keys else []
        )
        lead = len(handles)
        prefetch = None
        if self._prefetcher is not None and lead < len(keys):
            try:
                prefetch = self._prefetcher.submit(
                    keys[lead:], object_size=object_size, group_size=ws, extra_read_count=extra
                )
            except Exception:
                log.exception("L2 prefetch submit failed; answering with the L1 prefix only")
        lease = self.leases.grant(
            client, key.request_id, keys[:lead], handles, 1 + extra, locked_since=now,
            prefetching=prefetch is not None,
        )
        if prefetch is not None and lease is not None:
            rest = keys[lead:]
            prefetch.add_done_callback(
                lambda done: self._attach_prefetch(lease, rest, done, 1 + extra, now)
            )
        job = LookupJob(
            key.request_id, ws, lead // ws, len(hashes), prefetch, now,
            model_name=key.model_name, cache_salt=key.cache_salt, owner=client,
        )
        self._put_job(job)
        with self._lock:
            self.lookups_total += 1
        self._report_lookup(key, len(hashes), lead // ws)
        return job

    def _attach_prefetch(
        self, lease: Lease, keys: list[ObjectKey], done: PrefetchJobLike, count: int, since: float
    ) -> None:
        loaded = done.loaded_count
        handles = list(done.locked_handles)[:loaded]
        self.leases.attach_prefetch(lease, keys[: len(handles)], handles, count, locked_since=since)

    def _report_lookup(self, key: RequestKey, chunks: int, l1_chunks: int) -> None:
        # One report per request, never per key: this is the LOOKUP hot path.
        c = self.chunk_size
        labels = {"model_name": key.model_name, "cache_salt": key.cache_salt}
        self.metrics.inc(LOOKUP_REQUESTS.name, 1, **labels)
        self.metrics.inc(LOOKUP_TOKENS.name, chunks * c, **labels)
        self.metrics.inc(LOOKUP_HIT_TOKENS.name, l1_chunks * c, tier="l1", **labels)

    def _put_job(self, job: LookupJob) -> None:
        """Record a job under (owner, request_id), replacing the owner's earlier one. Past the
        per-client cap the client's oldest unqueried job goes, and past `max_sessions` jobs of
        all clients the oldest overall (its locks stay in its lease, which has its own caps and
        TTL; its prefetch is cancelled)."""
        replaced: list[LookupJob] = []
        over_cap: list[LookupJob] = []
        with self._lock:
            mine = self._jobs_per_client.setdefault(job.owner, OrderedDict())
            if job.request_id in mine:
                replaced.append(self._forget_job(job.owner, job.request_id))
                mine = self._jobs_per_client.setdefault(job.owner, OrderedDict())
            self._jobs[(job.owner, job.request_id)] = job
            mine[job.request_id] = None
            while len(mine) > self.limits.max_lookups_per_client:
                over_cap.append(self._forget_job(job.owner, next(iter(mine))))
            # All clients together: at most one live job per allowed session.
            while len(self._jobs) > self.limits.max_sessions:
                owner, rid = next(iter(self._jobs))
                over_cap.append(self._forget_job(owner, rid))
            self.jobs_dropped_total += len(over_cap)
        for old in replaced + over_cap:
            if old.prefetch is not None and not old.prefetch.done:
                old.prefetch.cancel()

    def _forget_job(self, owner: ClientId, request_id: str) -> LookupJob:
        """Remove a job from both indexes (the caller holds the lock)."""
        job = self._jobs.pop((owner, request_id))
        mine = self._jobs_per_client.get(owner)
        if mine is not None:
            mine.pop(request_id, None)
            if not mine:
                del self._jobs_per_client[owner]
        return job

    def query(self, request_id: str, client: ClientId = LOCAL_CLIENT) -> tuple[bool, int | None]:
        """QUERY_PREFETCH_STATUS of the caller's own job: (known, hits). Unknown: (False, 0);
        running: (True, None); done: (True, hit chunks) and the job is forgotten, so a result
        is returned once."""
        with self._lock:
            job = self._jobs.get((client, request_id))
            if job is None:
                return False, 0
            if not job.done:
                return True, None
            self._forget_job(client, request_id)
            hits = job.hit_chunks()
            self.lookup_hit_chunks_total += hits
        # Counted here, where the job is consumed (once: it was just forgotten), because only
        # now is the number of chunks the prefetch made readable final.
        if job.prefetch is not None:
            self.metrics.inc(
                LOOKUP_HIT_TOKENS.name, (hits - job.l1_chunks) * self.chunk_size,
                tier="l2", model_name=job.model_name, cache_salt=job.cache_salt,
            )
        return True, hits

    def wait(self, request_id: str, timeout: float, client: ClientId = LOCAL_CLIENT) -> int | None:
        """WAIT_PREFETCH_STATUS: like query, blocking up to `timeout` seconds; None = timed out."""
        with self._lock:
            job = self._jobs.get((client, request_id))
        if job is None:
            return 0
        if job.prefetch is not None and not job.prefetch.done:
            job.prefetch.wait(max(0.0, min(float(timeout), 3600.0)))
        known, hits = self.query(request_id, client)
        return hits if known else 0

    def lookup_hits(self, request_id: str, client: ClientId = LOCAL_CLIENT) -> int | None:
        """QUERY_PREFETCH_LOOKUP_HITS: L1 prefix + L2 hits once the L2 lookup finished; 0 for an
        unknown id. Does not consume the job."""
        with self._lock:
            job = self._jobs.get((client, request_id))
            return 0 if job is None else job.lookup_hits()

    def free_lookup_locks(
        self, key: RequestKey, tp_size: int = 1, client: ClientId = LOCAL_CLIENT, *, readers: int = 0
    ) -> int:
        """Release up to `1 + extra` locks on each key of [start, end) (all ranks when
        worker_id is nil) from the caller's own lease of the request. Returns how many keys
        had locks released."""
        hashes = self.range_hashes(key, client)
        keys = self.keys_of(key, hashes, key.worker_id)
        if not keys:
            return 0
        extra = self.extra_locks(tp_size, key.world_size, readers)
        return self.leases.release(client, key.request_id, keys, 1 + extra)

    def end_session(self, request_id: str, client: ClientId = LOCAL_CLIENT) -> bool:
        """END_SESSION: forget the session and LRU-touch its chunks; releases no locks (as
        0.5.0: unused ones are freed by FREE_LOOKUP_LOCKS, or lapse with the read TTL)."""
        record = self.sessions.end(request_id)
        if record is None:
            return False
        keys = self._keys(record.model_name, record.world_size, record.cache_salt, record.chunk_hashes, None)
        if keys:
            self.l1.touch(keys)
        return True

    def reap(self) -> tuple[int, int]:
        """Remove expired sessions, abandoned jobs, lapsed leases and pending transfers whose
        locks lapsed; returns (sessions, jobs) removed."""
        sessions = len(self.sessions.reap())
        now = self._clock.monotonic()
        with self._lock:
            stale = [ident for ident, job in self._jobs.items() if now - job.created_at >= self._job_ttl]
            jobs = [self._forget_job(owner, rid) for owner, rid in stale]
            lapsed_writes = [pid for pid, w in self._writes.items() if w.expires <= now]
            for pid in lapsed_writes:
                self._pop_write(pid)
            lapsed_reads = [pid for pid, r in self._reads.items() if r.ticket.expires_at <= now]
            for pid in lapsed_reads:
                del self._reads[pid]
        for job in jobs:
            if job.prefetch is not None and not job.prefetch.done:
                job.prefetch.cancel()
        self.leases.reap()
        return sessions, len(stale)

    def active_job_count(self, client: ClientId | None = None) -> int:
        with self._lock:
            if client is None:
                return len(self._jobs)
            return len(self._jobs_per_client.get(client, ()))

    # -- store / retrieve (L1 side) -------------------------------------------------------

    def reserve_new(self, keys: Sequence[ObjectKey], object_size: int) -> list[tuple[int, MemoryHandle]]:
        """Reserve the keys that do not exist yet; returns (position, handle) of each reserved one.
        When the batch does not fit even after on-the-spot eviction, the longest leading part
        that fits is reserved (prefix chunks are the ones a later lookup can use). The
        reclaimer evicts at most what the reservation needs, and only when it can then fit."""
        if not keys:
            return []
        results = self.l1.reserve_write(keys, [object_size] * len(keys), WriteMode.NEW)
        reserved = [(i, h) for i, (s, h) in enumerate(results) if s.ok and h is not None]
        if reserved or not any(s is OpResult.OUT_OF_MEMORY for s, _ in results):
            return reserved
        n = len(keys) // 2
        while n > 0:
            results = self.l1.reserve_write(keys[:n], [object_size] * n, WriteMode.NEW)
            reserved = [(i, h) for i, (s, h) in enumerate(results) if s.ok and h is not None]
            if reserved or not any(s is OpResult.OUT_OF_MEMORY for s, _ in results):
                return reserved
            n //= 2
        return []

    def commit(self, keys: Sequence[ObjectKey], handles: Sequence[MemoryHandle] | None = None) -> bool:
        """Make written objects readable; True when every one was."""
        return self.commit_count(keys, handles) == len(keys)

    def commit_count(self, keys: Sequence[ObjectKey], handles: Sequence[MemoryHandle] | None = None) -> int:
        """Make written objects (the exact ones, with `handles`) readable; returns how many
        were (the newly stored chunks)."""
        return sum(r.ok for r in self.l1.finish_write(keys, handles=handles)) if keys else 0

    def abort(self, keys: Sequence[ObjectKey], handles: Sequence[MemoryHandle] | None = None) -> None:
        """Discard reserved objects whose data will never be complete."""
        if keys:
            self.l1.abort_write(keys, handles=handles)

    def acquire_for_read(
        self,
        keys: Sequence[ObjectKey],
        object_size: int | None = None,
        *,
        request_id: str,
        client: ClientId = LOCAL_CLIENT,
    ) -> ReadTicket | None:
        """A retrieve of `keys` for `request_id`: consume one LOOKUP lock per key from a lease
        of that request and pin the objects for the copy-out. None when any key holds no
        such lock (or another size, or was cleared): then the locks it would have consumed
        are given back, as the engine will not retrieve those keys."""
        return self.leases.take(client, request_id, keys, object_size)

    def release_read(self, ticket: ReadTicket) -> None:
        """After a copy-out: the objects are no longer read."""
        self.leases.release_ticket(ticket)

    # -- engine-driven pending transfers ----------------------------------------------------

    def prepare_store(
        self,
        client: ClientId,
        instance_id: int,
        transfer: TransferKeys,
        object_size: int,
        started: float | None = None,
    ) -> list[tuple[int, MemoryHandle]]:
        """PREPARE_STORE: reserve the chunks not cached yet and record them under (client,
        instance, key) until its COMMIT_STORE. While the client has other writes pending, only
        what its pending write cap leaves room for is reserved (its first pending store is never
        cut, so one request larger than the cap still stores). A key another client (or this
        one) is writing already is not reserved again: never two writers on one slot."""
        keys = transfer.keys
        with self._lock:
            held = self._write_bytes.get(client, 0)
        room = self._pending_write_cap - held
        fit = len(keys) if held == 0 else max(0, room) // object_size
        if fit < len(keys):
            with self._lock:
                self.pending_write_refusals_total += 1
            keys = keys[:fit]
        reserved = self.reserve_new(keys, object_size)
        if not reserved:
            return []
        pid = (client, instance_id, transfer.identity)
        now = self._clock.monotonic()
        with self._lock:
            entry = self._writes.get(pid)
            if entry is None:
                entry = _PendingWrite([], [], 0, started, now + self.l1.write_ttl_seconds)
                self._writes[pid] = entry
            entry.keys.extend(keys[i] for i, _ in reserved)
            entry.handles.extend(h for _, h in reserved)
            entry.nbytes += object_size * len(reserved)
            self._write_bytes[client] = self._write_bytes.get(client, 0) + object_size * len(reserved)
        return reserved

    def commit_store(self, client: ClientId, instance_id: int, identity: tuple[Any, ...]) -> tuple[int, int, float | None] | None:
        """COMMIT_STORE of the caller's own pending write: make its objects readable. Returns
        (stored, reserved, started), or None when the caller has nothing pending under that key."""
        with self._lock:
            entry = self._pop_write((client, instance_id, identity))
        if entry is None:
            return None
        return self.commit_count(entry.keys, entry.handles), len(entry.keys), entry.started

    def prepare_retrieve(
        self,
        client: ClientId,
        instance_id: int,
        transfer: TransferKeys,
        request_id: str,
        object_size: int,
        started: float | None = None,
    ) -> ReadTicket | None:
        """PREPARE_RETRIEVE: consume the request's LOOKUP locks and pin the objects until the
        caller's own COMMIT_RETRIEVE (an earlier unfinished one of the same key is released)."""
        ticket = self.acquire_for_read(transfer.keys, object_size, request_id=request_id, client=client)
        if ticket is None:
            return None
        with self._lock:
            old = self._reads.pop((client, instance_id, transfer.identity), None)
            self._reads[(client, instance_id, transfer.identity)] = _PendingRead(ticket, started)
        if old is not None:
            self.release_read(old.ticket)
        return ticket

    def commit_retrieve(
        self, client: ClientId, instance_id: int, identity: tuple[Any, ...]
    ) -> tuple[ReadTicket, float | None] | None:
        """COMMIT_RETRIEVE of the caller's own pinned copy: release it. None when the caller
        has none under that key."""
        with self._lock:
            entry = self._reads.pop((client, instance_id, identity), None)
        if entry is None:
            return None
        self.release_read(entry.ticket)
        return entry.ticket, entry.started

    def drop_instance(self, client: ClientId, instance_id: int) -> tuple[int, int]:
        """Forget a registration's pending transfers: uncommitted writes are discarded (never
        published), pinned copies released. Only that client's; returns (writes, reads)."""
        with self._lock:
            writes = [self._pop_write(pid) for pid in list(self._writes) if pid[:2] == (client, instance_id)]
            reads = [self._reads.pop(pid) for pid in list(self._reads) if pid[:2] == (client, instance_id)]
        for w in writes:
            if w is not None:
                self.abort(w.keys, w.handles)
        for r in reads:
            self.release_read(r.ticket)
        return len(writes), len(reads)

    def pending_counts(self, client: ClientId, instance_id: int) -> tuple[int, int]:
        """(pending writes, pending reads) of one registration."""
        with self._lock:
            return (
                sum(1 for pid in self._writes if pid[:2] == (client, instance_id)),
                sum(1 for pid in self._reads if pid[:2] == (client, instance_id)),
            )

    def pending_write_bytes(self, client: ClientId) -> int:
        with self._lock:
            return self._write_bytes.get(client, 0)

    def _pop_write(self, pid: PendingId) -> _PendingWrite | None:
        """Remove a pending write and its bytes from the client's total (lock held)."""
        entry = self._writes.pop(pid, None)
        if entry is not None:
            left = self._write_bytes.get(pid[0], 0) - entry.nbytes
            if left > 0:
                self._write_bytes[pid[0]] = left
            else:
                self._write_bytes.pop(pid[0], None)
        return entry

    def report_status(self) -> dict[str, Any]:
        leases = self.leases.count()
        with self._lock:
            return {
                "is_healthy": True,
                "active_prefetch_jobs": len(self._jobs),
                "lookup_leases": leases,
                "lookup_leases_released_over_cap_total": self.leases.released_over_cap_total,
                "lookup_jobs_dropped_total": self.jobs_dropped_total,
                "pending_writes": len(self._writes),
                "pending_write_bytes": sum(self._write_bytes.values()),
                "pending_write_bytes_per_client_cap": self._pending_write_cap,
                "pending_write_refusals_total": self.pending_write_refusals_total,
                "pending_reads": len(self._reads),
                "lookups_total": self.lookups_total,
                "lookup_hit_chunks_total": self.lookup_hit_chunks_total,
                "limits": {
                    "max_tokens_per_key": self.limits.max_tokens_per_key,
                    "max_sessions": self.limits.max_sessions,
                    "max_sessions_per_client": self.limits.max_sessions_per_client,
                    "max_lookups_per_client": self.limits.max_lookups_per_client,
                },
                "layouts": {
                    f"{model}@{ws}": {"object_size": lay.object_size, "registrations": lay.refs}
                    for (model, ws), lay in self._layouts.items()
                },
            }
