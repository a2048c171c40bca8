"""WarmPrefetchService: an operator or a router warms L1 from L2 for a prompt before its request
arrives. The prompt's tokens are hashed into its chunk keys (one per rank), every key an L2
adapter holds is loaded into L1 and kept there unlocked; the caller polls the job by id."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from lmcache_core.cache_ops.tiers import Tier
from lmcache_core.errors import InvalidRequestError, NotFoundError, UnavailableError
from lmcache_core.hashing import TokenHasher
from lmcache_core.keys import ObjectKey, kv_rank_for, validate_cache_salt
from lmcache_core.kv_caches import KVCacheRegistry
from lmcache_core.l2.prefetch_controller import PrefetchJob
from lmcache_core.ports import Clock
from lmcache_core.storage_manager import StorageManager

log = logging.getLogger(__name__)

MAX_TOKEN_IDS = 1_000_000
"""Most token ids one prefetch may carry (bounds the body and the hashing work)."""
MAX_JOBS = 10_000
"""Jobs remembered at once; past it the oldest is forgotten (its load still completes)."""
JOB_TTL_SECONDS = 3600.0
"""A job nobody polled is forgotten after this long; nothing is locked meanwhile."""

PENDING = "pending"
COMPLETED = "completed"


@dataclass(frozen=True)
class PrefetchSubmission:
    """The answer to a submit: a job id and the prompt's full chunks, or no job (`noop`) for a
    prompt shorter than one chunk."""

    request_id: str | None
    chunks: int

    @property
    def status(self) -> str:
        return "noop" if self.request_id is None else "submitted"


@dataclass(frozen=True)
class PrefetchStatus:
    """A job's state: pending, or completed with the keys now in L1 out of those asked for."""

    request_id: str
    state: str
    found_keys: int = 0
    total_keys: int = 0


@dataclass
class _Job:
    created_at: float
    total_keys: int
    handle: PrefetchJob | None
    found_without_l2: int = 0


class WarmPrefetchService:
    """Submits warm prefetches to the storage manager's prefetch controller and keeps the table
    of jobs not yet polled to completion (each answered `completed` exactly once)."""

    def __init__(
        self, hasher: TokenHasher, storage: StorageManager, kv_caches: KVCacheRegistry, *, clock: Clock
    ) -> None:
        self._hasher = hasher
        self._storage = storage
        self._kv_caches = kv_caches
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, _Job] = OrderedDict()

    def submit(
        self,
        model_name: str,
        world_size: int,
        token_ids: Sequence[int],
        cache_salt: str = "",
        *,
        source: Tier = Tier.L2,
        target: Tier = Tier.L1,
    ) -> PrefetchSubmission:
        """Start warming L1 with the prompt's chunks. Raises InvalidRequestError for another
        direction than L2 -> L1, too many or invalid token ids, or an invalid cache_salt;
        UnavailableError when no worker of (model, world size) is registered here (the object
        size is unknown until one is)."""
        if source is not Tier.L2 or target is not Tier.L1:
            raise InvalidRequestError(
                f"unsupported prefetch direction {source.value!r}->{target.value!r}; only 'l2'->'l1'"
            )
        object_size = self._kv_caches.object_size(model_name, world_size)
        if object_size is None:
            raise UnavailableError(
                f"no layout registered for model_name={model_name!r} world_size={world_size}; "
                "the model has not allocated KV cache on this node yet"
            )
        if len(token_ids) > MAX_TOKEN_IDS:
            raise InvalidRequestError(
                f"too many token_ids in a single request (limit={MAX_TOKEN_IDS}, got={len(token_ids)})"
            )
        validate_cache_salt(cache_salt)
        try:
            hashes = self._hasher.chunk_hashes(list(token_ids))
        except ValueError as exc:
            raise InvalidRequestError(f"token_ids: {exc}") from None
        if not hashes:
            return PrefetchSubmission(None, 0)
        ranks = [kv_rank_for(world_size, r) for r in range(world_size)]
        keys = [ObjectKey(h, model_name, rank, 0, cache_salt) for h in hashes for rank in ranks]
        prefetch = self._storage.prefetch
        if prefetch is not None:
            job = _Job(self._clock.monotonic(), len(keys), prefetch.submit(keys, object_size=object_size, warm=True))
        else:  # no L2: what L1 already holds is all there is
            found = sum(1 for k in keys if self._storage.l1.is_readable(k))
            job = _Job(self._clock.monotonic(), len(keys), None, found)
        request_id = uuid.uuid4().hex
        with self._lock:
            self._forget_stale()
            self._jobs[request_id] = job
        return PrefetchSubmission(request_id, len(hashes))

    def status(self, request_id: str) -> PrefetchStatus:
        """The job's state; the first poll that sees it completed also forgets it (a later poll
        is NotFoundError, as for an id never submitted)."""
        with self._lock:
            job = self._jobs.get(request_id)
            if job is None:
                raise NotFoundError(
                    f"unknown prefetch request_id={request_id!r} (already completed or never submitted)"
                )
            if job.handle is not None and not job.handle.done:
                return PrefetchStatus(request_id, PENDING)
            del self._jobs[request_id]
        found = job.found_without_l2 if job.handle is None else job.handle.loaded_count
        log.info("warm prefetch %s completed: %d/%d keys in L1", request_id, found, job.total_keys)
        return PrefetchStatus(request_id, COMPLETED, found, job.total_keys)

    def pending_count(self) -> int:
        with self._lock:
            return len(self._jobs)

    def close(self) -> None:
        with self._lock:
            self._jobs.clear()

    def _forget_stale(self) -> None:
        # Called with the lock held. Oldest first: the table is in submission order.
        deadline = self._clock.monotonic() - JOB_TTL_SECONDS
        while self._jobs:
            oldest = next(iter(self._jobs.values()))
            if len(self._jobs) < MAX_JOBS and oldest.created_at > deadline:
                break
            self._jobs.popitem(last=False)
