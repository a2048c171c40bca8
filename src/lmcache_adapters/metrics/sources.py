"""Where the metrics come from: an L1 listener for chunk counters and scrape-time readers of
components' own counters (L1/L2 usage, in-flight work, sessions, instances, thread health)."""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from lmcache_core import metric_names as mn
from lmcache_core.keys import ObjectKey
from lmcache_core.l1.listener import L1Listener
from lmcache_core.periodic import PeriodicThreadRegistry
from lmcache_core.ports import MetricsSink
from lmcache_core.storage_manager import StorageManager

from .prometheus import ScrapeSample

log = logging.getLogger(__name__)


_MODEL = operator.itemgetter(1)  # ObjectKey fields, read in C over a whole batch
_SALT = operator.itemgetter(4)


def _group_counts(keys: Sequence[ObjectKey]) -> dict[tuple[str, str], int]:
    """Keys per (model_name, cache_salt). This runs for every LOOKUP's 128+ keys, which come
    from one request: that case (one model, one salt) is recognised by two C-level passes."""
    if not keys:
        return {}
    models, salts = set(map(_MODEL, keys)), set(map(_SALT, keys))
    if len(models) == 1 and len(salts) == 1:
        return {(models.pop(), salts.pop()): len(keys)}
    groups: dict[tuple[str, str], int] = {}
    for key in keys:
        group = (key.model_name, key.cache_salt)
        groups[group] = groups.get(group, 0) + 1
    return groups


class L1MetricsListener(L1Listener):
    """Counts L1 chunks written, read (when the read finishes) and evicted, by model and tenant.
    It runs under the L1 lock, so it only groups keys and increments counters."""

    def __init__(self, metrics: MetricsSink, *, tenant_labels: bool = True) -> None:
        self._metrics = metrics
        self._tenant_labels = tenant_labels

    def _count(self, family: mn.MetricFamily, keys: Sequence[ObjectKey]) -> None:
        if not self._tenant_labels:
            self._metrics.inc(family.name, len(keys))
            return
        for (model_name, cache_salt), count in _group_counts(keys).items():
            self._metrics.inc(family.name, count, model_name=model_name, cache_salt=cache_salt)

    def on_l1_keys_write_finished(self, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        self._count(mn.L1_CHUNKS_WRITTEN, keys)

    def on_l1_keys_read_finished(self, keys: Sequence[ObjectKey]) -> None:
        # Counted when a read ends, as LMCache 0.5.0 counts l1_read: a read lock taken by a
        # LOOKUP and the retrieve that uses it are one read, not two.
        self._count(mn.L1_CHUNKS_READ, keys)

    def on_l1_keys_removed(self, keys: Sequence[ObjectKey], sizes: Sequence[int], reason: str) -> None:
        if reason == "evict":
            self._count(mn.L1_CHUNKS_EVICTED, keys)


def _field(status: Mapping[str, Any], name: str) -> Any:
    """A status field at the top level, else in a contributor's nested report (the data path
    reports its sessions under its own name); None when absent everywhere."""
    for key, value in status.items():
        if key != "storage_manager" and isinstance(value, Mapping) and name in value:
            nested = value[name]
            if nested:
                return nested
    return status.get(name)


def storage_samples(storage: StorageManager) -> Iterator[ScrapeSample]:
    """L1 usage and objects, per-adapter L2 usage, write-back queue and in-flight work."""
    used, total = storage.l1.usage_bytes()
    yield mn.L1_USAGE_BYTES.name, {}, used
    yield mn.L1_CAPACITY_BYTES.name, {}, total
    yield mn.L1_USAGE_RATIO.name, {}, (used / total if total else 0.0)
    yield mn.L1_OBJECTS.name, {}, storage.l1.object_count()
    l1_status = storage.l1.report_status()
    yield mn.L1_ALLOCATION_FAILURES.name, {}, l1_status.get("out_of_memory_total", 0)
    for entry in storage.l2_adapters:
        try:
            usage = entry.adapter.usage()
        except Exception:
            log.debug("usage() of L2 adapter %s failed during a scrape", entry.name, exc_info=True)
            continue
        yield mn.L2_USAGE_BYTES.name, {"adapter": entry.name, "l2_name": entry.name}, usage.used_bytes
        if usage.capacity_bytes is not None:
            yield mn.L2_CAPACITY_BYTES.name, {"adapter": entry.name}, usage.capacity_bytes
    yield mn.L2_ADAPTERS.name, {"state": "active"}, len(storage.l2_adapters)
    yield mn.L2_ADAPTERS.name, {"state": "draining"}, 0
    eviction = storage.eviction.report_status()
    yield mn.L1_EVICTION_CYCLES.name, {}, eviction.get("cycles", 0)
    yield mn.L1_EVICTION_PRESSURE_CYCLES.name, {}, eviction.get("pressure_cycles_total", 0)
    store = storage.store.report_status()
    yield mn.L2_STORES_IN_FLIGHT.name, {}, store.get("in_flight_keys", 0)
    yield mn.L2_STORE_QUEUE.name, {}, store.get("queue_size", 0)
    if storage.prefetch is not None:
        prefetch = storage.prefetch.report_status()
        yield mn.L2_LOADS_IN_FLIGHT.name, {}, prefetch.get("in_flight_jobs", 0)
    else:
        yield mn.L2_LOADS_IN_FLIGHT.name, {}, 0


def engine_samples(status: Mapping[str, Any], storage: StorageManager) -> Iterator[ScrapeSample]:
    """Active sessions, prefetch jobs and registered instances from the engine's status fields
    (`status`: its report, contributed by the data path); prefetch jobs fall back to the
    storage manager's count."""
    contributed = {name: _field(status, name) for name in ("active_sessions", "active_prefetch_jobs", "workers", "registered_gpu_ids")}
    yield mn.ACTIVE_SESSIONS.name, {}, float(contributed.get("active_sessions") or 0)
    jobs = float(contributed.get("active_prefetch_jobs") or 0)
    if storage.prefetch is not None:
        jobs = max(jobs, float(storage.prefetch.active_jobs()))
    yield mn.PREFETCH_JOBS.name, {}, jobs
    workers = contributed.get("workers")
    gpu_ids = contributed.get("registered_gpu_ids")
    instances = len(workers) if isinstance(workers, Mapping) else len(gpu_ids or ())
    yield mn.REGISTERED_INSTANCES.name, {}, instances


def thread_samples(registry: PeriodicThreadRegistry) -> Iterator[ScrapeSample]:
    yield mn.PERIODIC_THREADS_UNHEALTHY.name, {}, registry.health()["unhealthy_count"]


def stack_source(
    storage: StorageManager, engine_status: Callable[[], Mapping[str, Any]], threads: PeriodicThreadRegistry
) -> Callable[[], list[ScrapeSample]]:
    """One scrape source over a whole server stack: the storage manager, the engine's status
    report (`engine_status`, e.g. `engine.report_status`) and the periodic-thread registry."""

    def read() -> list[ScrapeSample]:
        samples: list[ScrapeSample] = list(storage_samples(storage))
        try:
            samples.extend(engine_samples(engine_status(), storage))
        except Exception:
            log.debug("engine status unavailable during a scrape", exc_info=True)
        samples.extend(thread_samples(threads))
        return samples

    return read
