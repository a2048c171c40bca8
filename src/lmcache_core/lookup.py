"""The data path's domain logic: object layouts, LOOKUP jobs, lookup locks, store/retrieve reservations."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lmcache_core.errors import InvalidKeyError
from lmcache_core.hashing import TokenBytes
from lmcache_core.keys import ObjectKey, kv_rank_for, validate_cache_salt, validate_model_name
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult, WriteMode
from lmcache_core.metric_names import LOOKUP_HIT_TOKENS, LOOKUP_REQUESTS, LOOKUP_TOKENS
from lmcache_core.ports import Clock, MemoryHandle, MetricsSink, NullMetricsSink
from lmcache_core.sessions import SessionManager

log = logging.getLogger(__name__)

# A job nobody queried is dropped after this long (its locks expire with the L1 read TTL).
DEFAULT_JOB_TTL_SECONDS = 600.0
# Recent key lists (engines look the same request up repeatedly, then store and retrieve it):
# reusing the same ObjectKey objects also makes L1 table lookups hit on identity.
_KEY_CACHE_ENTRIES = 256


def _token_count(tokens: Any) -> int:
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


class DataPath:
    """LOOKUP / prefetch jobs / FREE_LOOKUP_LOCKS / END_SESSION and the L1 side of stores and
    retrieves, in key terms. Lock counts follow LMCache 0.5.0: LOOKUP read-locks each present key
    of the leading run `1 + extra` times (`extra = tp_size - 1` when tp_size > world_size, the MLA
    case where several tensor-parallel ranks read one KV rank), each retrieve releases one."""

    def __init__(
        self,
        l1: L1Manager,
        sessions: SessionManager,
        *,
        clock: Clock,
        prefetcher: PrefetcherLike | None = None,
        job_ttl_seconds: float = DEFAULT_JOB_TTL_SECONDS,
        metrics: MetricsSink | None = None,
    ) -> None:
        self.l1 = l1
        self.metrics: MetricsSink = metrics if metrics is not None else NullMetricsSink()
        self.sessions = sessions
        self.chunk_size = sessions.hasher.chunk_size
        self._clock = clock
        self._prefetcher = prefetcher
        self._job_ttl = job_ttl_seconds
        self._lock = threading.Lock()
        self._layouts: dict[tuple[str, int], ObjectLayout] = {}
        self._jobs: dict[str, LookupJob] = {}
        self._key_cache: OrderedDict[tuple[Any, ...], tuple[list[bytes], list[ObjectKey]]] = OrderedDict()
        self._job_done = threading.Condition(self._lock)
        self.lookups_total = 0
        self.lookup_hit_chunks_total = 0

    # -- layouts --------------------------------------------------------------------------

    def register_layout(self, model_name: str, world_size: int, object_size: int) -> None:
        """Add a reference to the layout of (model, world_size); the latest size wins."""
        if object_size <= 0:
            raise ValueError(f"object_size must be > 0, got {object_size}")
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

    def chunk_hashes(self, key: RequestKey) -> list[bytes]:
        """Hashes of every full chunk of the key's tokens (through its session)."""
        return self.sessions.chunk_hashes(
            key.request_id, key.token_ids, model_name=key.model_name, world_size=key.world_size,
            cache_salt=key.cache_salt,
        )

    def range_hashes(self, key: RequestKey) -> list[bytes]:
        """Hashes of the chunks of [start, end); InvalidKeyError when unaligned or beyond the tokens."""
        c = self.chunk_size
        if key.start % c or key.end % c:
            raise InvalidKeyError(f"start {key.start} and end {key.end} must be multiples of {c}")
        hashes = self.chunk_hashes(key)
        if key.end // c > len(hashes):
            raise InvalidKeyError(f"end {key.end} is beyond the {len(hashes) * c} tokens of full chunks")
        return hashes[key.start // c : key.end // c]

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
        keys = self._build_keys(model_name, world_size, cache_salt, hashes, rank)
        with self._lock:
            self._key_cache[ident] = (hashes.copy(), keys)
            while len(self._key_cache) > _KEY_CACHE_ENTRIES:
                self._key_cache.popitem(last=False)
        return list(keys)

    @staticmethod
    def _build_keys(
        model: str, ws: int, salt: str, hashes: Sequence[bytes], rank: int | None
    ) -> list[ObjectKey]:
        ranks = [kv_rank_for(ws, r) for r in range(ws)] if rank is None else [kv_rank_for(ws, rank)]
        # Every part was validated already (a RequestKey or session checked model and salt,
        # kv_rank_for the rank, the hasher made the digests), so per-key validation is skipped.
        trusted = ObjectKey.trusted
        return [trusted(h, model, kr, salt) for h in hashes for kr in ranks]

    # -- lookup ---------------------------------------------------------------------------

    @staticmethod
    def extra_locks(tp_size: int, world_size: int) -> int:
        """Extra read locks per key: MLA engines run tp_size readers over world_size KV ranks."""
        return tp_size - 1 if tp_size > world_size else 0

    def lookup(self, key: RequestKey, tp_size: int = 1) -> LookupJob:
        """Lock the leading run of L1 hits over all full chunks (start/end ignored, as 0.5.0
        does), hand the rest to the L2 prefetcher, and record the job under the request id."""
        ws = key.world_size
        now = self._clock.monotonic()
        object_size = self.object_size(key.model_name, ws)
        if object_size is None:
            job = LookupJob(key.request_id, ws, 0, 0, None, now)
            self._put_job(job)
            self._report_lookup(key, _token_count(key.token_ids) // self.chunk_size, 0)
            return job
        hashes = self.chunk_hashes(key)
        keys = self.keys_of(key, hashes)
        extra = self.extra_locks(tp_size, ws)
        # Only the leading run of whole chunks (every rank) is locked: past a hole the engine
        # cannot use a chunk. An object of another size under the same key was stored under an
        # earlier layout of this model name: it cannot be served to this engine, so it is a miss.
        lead = self.l1.reserve_read_prefix(keys, extra, nbytes=object_size, group=ws) if keys else 0
        prefetch = None
        if self._prefetcher is not None and lead < len(keys):
            try:
                prefetch = self._prefetcher.submit(
                    keys[lead:], object_size=object_size, group_size=ws, extra_read_count=extra
                )
            except Exception:
                log.exception("L2 prefetch submit failed; answering with the L1 prefix only")
        job = LookupJob(
            key.request_id, ws, lead // ws, len(hashes), prefetch, now,
            model_name=key.model_name, cache_salt=key.cache_salt,
        )
        self._put_job(job)
        with self._lock:
            self.lookups_total += 1
        self._report_lookup(key, len(hashes), lead // ws)
        return job

    def _report_lookup(self, key: RequestKey, chunks: int, l1_chunks: int) -> None:
        # One report per request, never per key: this is the LOOKUP hot path.
        c = self.chunk_size
        labels = {"model_name": key.model_name, "cache_salt": key.cache_salt}
        self.metrics.inc(LOOKUP_REQUESTS.name, 1, **labels)
        self.metrics.inc(LOOKUP_TOKENS.name, chunks * c, **labels)
        self.metrics.inc(LOOKUP_HIT_TOKENS.name, l1_chunks * c, tier="l1", **labels)

    def _put_job(self, job: LookupJob) -> None:
        with self._lock:
            self._jobs[job.request_id] = job

    def query(self, request_id: str) -> tuple[bool, int | None]:
        """QUERY_PREFETCH_STATUS: (known, hits). Unknown: (False, 0); running: (True, None);
        done: (True, hit chunks) and the job is forgotten, so a result is returned once."""
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None:
                return False, 0
            if not job.done:
                return True, None
            del self._jobs[request_id]
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

    def wait(self, request_id: str, timeout: float) -> int | None:
        """WAIT_PREFETCH_STATUS: like query, blocking up to `timeout` seconds; None = timed out."""
        with self._lock:
            job = self._jobs.get(request_id)
        if job is None:
            return 0
        if job.prefetch is not None and not job.prefetch.done:
            job.prefetch.wait(max(0.0, min(float(timeout), 3600.0)))
        known, hits = self.query(request_id)
        return hits if known else 0

    def lookup_hits(self, request_id: str) -> int | None:
        """QUERY_PREFETCH_LOOKUP_HITS: L1 prefix + L2 hits once the L2 lookup finished; 0 for an
        unknown id. Does not consume the job."""
        with self._lock:
            job = self._jobs.get(request_id)
            return 0 if job is None else job.lookup_hits()

    def free_lookup_locks(self, key: RequestKey, tp_size: int = 1) -> int:
        """Release `1 + extra` read locks on each key of [start, end) (all ranks when worker_id
        is nil). Returns how many keys were unlocked."""
        hashes = self.range_hashes(key)
        keys = self.keys_of(key, hashes, key.worker_id)
        if not keys:
            return 0
        results = self.l1.finish_read(keys, 1 + self.extra_locks(tp_size, key.world_size))
        return results.count(OpResult.SUCCESS)

    def end_session(self, request_id: str) -> bool:
        """END_SESSION: forget the session and LRU-touch its chunks; releases no locks."""
        record = self.sessions.end(request_id)
        if record is None:
            return False
        keys = self._keys(record.model_name, record.world_size, record.cache_salt, record.chunk_hashes, None)
        if keys:
            self.l1.touch(keys)
        return True

    def reap(self) -> tuple[int, int]:
        """Remove expired sessions and abandoned jobs; returns (sessions, jobs) removed."""
        sessions = len(self.sessions.reap())
        now = self._clock.monotonic()
        with self._lock:
            stale = [rid for rid, job in self._jobs.items() if now - job.created_at >= self._job_ttl]
            for rid in stale:
                del self._jobs[rid]
        return sessions, len(stale)

    def active_job_count(self) -> int:
        with self._lock:
            return len(self._jobs)

    # -- store / retrieve (L1 side) -------------------------------------------------------

    def reserve_new(self, keys: Sequence[ObjectKey], object_size: int) -> list[tuple[int, MemoryHandle]]:
        """Reserve the keys that do not exist yet; returns (position, handle) of each reserved one.
        When the batch does not fit even after on-the-spot eviction, the longest leading part
        that fits is reserved (prefix chunks are the ones a later lookup can use)."""
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

    def commit(self, keys: Sequence[ObjectKey]) -> bool:
        """Make written objects readable; True when every one was."""
        return self.commit_count(keys) == len(keys)

    def commit_count(self, keys: Sequence[ObjectKey]) -> int:
        """Make written objects readable; returns how many were (the newly stored chunks)."""
        return sum(r.ok for r in self.l1.finish_write(keys)) if keys else 0

    def abort(self, keys: Sequence[ObjectKey]) -> None:
        """Discard reserved objects whose data will never be complete."""
        if keys:
            self.l1.abort_write(keys)

    def acquire_for_read(
        self, keys: Sequence[ObjectKey], object_size: int | None = None
    ) -> list[MemoryHandle] | None:
        """Pin the objects for a copy-out (one lock of our own on top of the LOOKUP locks).
        None when any is missing (or, with `object_size`, has another size): then every found key
        also gives back one LOOKUP lock, as the engine will not retrieve them."""
        if not keys:
            return []
        results = self.l1.reserve_read(keys)
        if all(s.ok and h is not None and (object_size is None or h.nbytes == object_size) for s, h in results):
            return [h for _, h in results if h is not None]
        got = [k for k, (s, _) in zip(keys, results, strict=True) if s.ok]
        if got:
            self.l1.finish_read(got)  # ours
            self.l1.finish_read(got)  # the LOOKUP lock the engine will never use
        return None

    def release_read(self, keys: Sequence[ObjectKey]) -> None:
        """After a copy-out: release our lock and the engine's LOOKUP lock of each key."""
        if keys:
            self.l1.finish_read(keys)
            self.l1.finish_read(keys)

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "is_healthy": True,
                "active_prefetch_jobs": len(self._jobs),
                "lookups_total": self.lookups_total,
                "lookup_hit_chunks_total": self.lookup_hit_chunks_total,
                "layouts": {
                    f"{model}@{ws}": {"object_size": lay.object_size, "registrations": lay.refs}
                    for (model, ws), lay in self._layouts.items()
                },
            }
