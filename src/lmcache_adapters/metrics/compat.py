"""LMCache 0.5.0's metric names for our own data, so dashboards built for LMCache work unchanged.

LMCache 0.5.0 exports OpenTelemetry instruments through Prometheus: `lmcache_mp.l1_read` with
unit `chunks` becomes `lmcache_mp_l1_read_chunks_total`, and so on. Each family below is one of
those names, computed at scrape time from one of our families (summing away labels it does not
have, renaming `adapter` to `l2_name`), so the hot path pays nothing and the two always agree.
Families whose names are the same in both (`lmcache_mp_l1_usage_ratio`, `lmcache_mp_l2_usage_bytes`
with `l2_name`, `lmcache_mp_l2_adapters`) need no entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample

from lmcache_core import metric_names as mn

from .prometheus import CurrentSample

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


@dataclass(frozen=True)
class LegacyFamily:
    """One LMCache 0.5.0 family: its Prometheus name (without `_total`), kind, help, the family
    of ours it is read from, and its labels (`rename` maps ours to theirs)."""

    name: str
    kind: str
    help: str
    source: str
    labels: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    salt_only_when_set: bool = False
    """0.5.0 labels chunk counters with `cache_salt` only for a non-empty salt."""
    per_chunk: bool = False
    """Our family counts tokens of whole chunks; theirs counts chunks."""


def _c(name: str, help: str, source: mn.MetricFamily, *labels: str, **kw: object) -> LegacyFamily:
    return LegacyFamily(name, COUNTER, help, source.name, labels, **kw)  # type: ignore[arg-type]


_SALT = {"salt_only_when_set": True}
_L2_NAME = {"rename": (("adapter", "l2_name"),)}

LMCACHE_050_FAMILIES: tuple[LegacyFamily, ...] = (
    _c("lmcache_mp_l1_read_chunks", "Total chunks read from L1", mn.L1_CHUNKS_READ, "cache_salt", **_SALT),
    _c("lmcache_mp_l1_write_chunks", "Total chunks written to L1", mn.L1_CHUNKS_WRITTEN, "cache_salt", **_SALT),
    _c("lmcache_mp_l1_evicted_chunks", "Total chunks evicted from L1", mn.L1_CHUNKS_EVICTED, "cache_salt", **_SALT),
    _c("lmcache_mp_l1_eviction_loop_ticks", "L1 eviction-loop iterations (every cycle)", mn.L1_EVICTION_CYCLES),
    _c("lmcache_mp_l1_eviction_loop_triggered", "L1 eviction-loop iterations where the policy ran",
       mn.L1_EVICTION_PRESSURE_CYCLES),
    _c("lmcache_mp_l1_allocation_failure_chunks", "Count of L1 memory allocation failures (OOM)",
       mn.L1_ALLOCATION_FAILURES),
    _c("lmcache_mp_lookup_requested_tokens", "Total tokens submitted for lookup (chunk-aligned)", mn.LOOKUP_TOKENS,
       "cache_salt", "model_name"),
    _c("lmcache_mp_lookup_hit_tokens", "Total tokens found in L1+L2 during lookup (contiguous prefix)",
       mn.LOOKUP_HIT_TOKENS, "cache_salt", "model_name"),
    _c("lmcache_mp_num_chunks_loaded", "Total number of LMCache chunks loaded into the engine",
       mn.RETRIEVED_TOKENS, "model_name", "cache_salt", per_chunk=True),
    _c("lmcache_mp_l2_store_submitted_requests", "Total L2 store requests submitted", mn.L2_STORE_BATCHES_SUBMITTED),
    _c("lmcache_mp_l2_store_submitted_objects_chunks", "Total chunks submitted for L2 store", mn.L2_STORES_SUBMITTED),
    _c("lmcache_mp_l2_store_completed_requests", "Total L2 store requests completed", mn.L2_STORE_BATCHES_COMPLETED,
       "l2_name", **_L2_NAME),
    _c("lmcache_mp_l2_store_completed_objects_chunks", "Total chunks successfully stored to L2", mn.L2_STORES_COMPLETED),
    _c("lmcache_mp_l2_load_completed_requests", "Total L2 load tasks completed (per-adapter)",
       mn.PREFETCH_LOAD_BATCHES_COMPLETED, "l2_name", **_L2_NAME),
    _c("lmcache_mp_l2_prefetch_lookup_requests", "Total L2 prefetch lookup requests submitted", mn.PREFETCH_LOOKUPS),
    _c("lmcache_mp_l2_prefetch_lookup_objects_chunks", "Total chunks submitted for L2 prefetch lookup",
       mn.PREFETCH_LOOKUP_KEYS),
    _c("lmcache_mp_l2_prefetch_hit_chunks", "Total prefix chunks found in L2 lookup", mn.PREFETCH_HITS),
    _c("lmcache_mp_l2_prefetch_load_submitted_requests", "Total L2 prefetch load requests submitted (per-adapter)",
       mn.PREFETCH_LOAD_BATCHES),
    _c("lmcache_mp_l2_prefetch_load_submitted_objects_chunks", "Total chunks submitted for L2 load",
       mn.PREFETCH_LOAD_KEYS),
    _c("lmcache_mp_l2_prefetch_load_completed_chunks", "Total chunks successfully loaded from L2", mn.PREFETCH_LOADS),
    _c("lmcache_mp_l2_evicted_objects_chunks", "Total chunks evicted from L2", mn.L2_EVICTED_OBJECTS),
    LegacyFamily("lmcache_mp_l1_memory_usage_bytes", GAUGE, "Bytes currently held in L1 cache", mn.L1_USAGE_BYTES.name),
    LegacyFamily("lmcache_mp_active_prefetch_jobs", GAUGE, "Number of active prefetch jobs", mn.PREFETCH_JOBS.name),
    LegacyFamily("lmcache_mp_l0_l1_store_throughput_GB_per_second", HISTOGRAM,
                 "Histogram of L0->L1 (engine->CPU) store throughput in GB/s", mn.STORE_THROUGHPUT_GBPS.name),
    LegacyFamily("lmcache_mp_l0_l1_load_throughput_GB_per_second", HISTOGRAM,
                 "Histogram of L1->L0 (CPU->engine) load throughput in GB/s", mn.RETRIEVE_THROUGHPUT_GBPS.name),
    LegacyFamily("lmcache_mp_l2_store_throughput_GB_per_second", HISTOGRAM,
                 "Histogram of L1->L2 store throughput in GB/s", mn.L2_STORE_THROUGHPUT_GBPS.name),
    LegacyFamily("lmcache_mp_l2_load_throughput_GB_per_second", HISTOGRAM,
                 "Histogram of L2->L1 load throughput in GB/s", mn.L2_LOAD_THROUGHPUT_GBPS.name),
)
"""LMCache 0.5.0's families we can fill, in its names (documented in docs/observability.md)."""


def _their_labels(family: LegacyFamily, ours: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The labels of one of our series in their terms."""
    renamed = dict(ours)
    for mine, theirs in family.rename:
        if mine in renamed:
            renamed[theirs] = renamed.pop(mine)
    out = []
    for name in family.labels:
        if name not in renamed:
            continue  # dropped by --metrics-labels off: theirs go too
        value = renamed[name]
        if family.salt_only_when_set and name == "cache_salt" and not value:
            continue
        out.append((name, value))
    return tuple(out)


def _sum_series(
    family: LegacyFamily, samples: Sequence[CurrentSample], suffixes: Iterable[str]
) -> dict[tuple[tuple[str, tuple[tuple[str, str], ...]], str], float]:
    wanted = set(suffixes)
    totals: dict[tuple[tuple[str, tuple[tuple[str, str], ...]], str], float] = {}
    for labels, suffix, value in samples:
        if suffix not in wanted:
            continue
        le = labels.get("le", "")
        theirs = _their_labels(family, {k: v for k, v in labels.items() if k != "le"})
        key = ((le, theirs), suffix)
        totals[key] = totals.get(key, 0.0) + value
    return totals


def legacy_metrics(
    current: Mapping[str, list[CurrentSample]], *, chunk_size: int, families: Sequence[LegacyFamily] = LMCACHE_050_FAMILIES
) -> list[Metric]:
    """LMCache 0.5.0's families computed from our current samples (a DerivedSource body)."""
    out: list[Metric] = []
    for family in families:
        samples = current.get(family.source, [])
        if family.kind == HISTOGRAM:
            out.extend(_histograms(family, samples))
            continue
        suffix = "_total" if family.kind == COUNTER else ""
        totals = _sum_series(family, samples, [suffix])
        if not totals:
            continue
        metric: Metric
        if family.kind == COUNTER:
            metric = CounterMetricFamily(family.name, family.help, labels=list(family.labels))
        else:
            metric = GaugeMetricFamily(family.name, family.help, labels=list(family.labels))
        for ((_, labels), _), value in sorted(totals.items()):
            if family.per_chunk:
                value = float(int(value) // max(1, chunk_size))
            # Samples one by one: a series may lack a label another has (an empty cache_salt).
            metric.samples.append(Sample(family.name + suffix, dict(labels), value))
        out.append(metric)
    return out


def _histograms(family: LegacyFamily, samples: Sequence[CurrentSample]) -> list[Metric]:
    totals = _sum_series(family, samples, ["_bucket", "_sum", "_count"])
    if not totals:
        return []
    series: dict[tuple[tuple[str, str], ...], dict[str, object]] = {}
    for ((le, labels), suffix), value in totals.items():
        entry = series.setdefault(labels, {"buckets": {}, "sum": 0.0})
        if suffix == "_bucket":
            entry["buckets"][le] = value  # type: ignore[index]
        elif suffix == "_sum":
            entry["sum"] = value
    names = sorted({name for labels in series for name, _ in labels})
    metric = HistogramMetricFamily(family.name, family.help, labels=names)
    for labels, entry in sorted(series.items()):
        buckets = sorted(entry["buckets"].items(), key=lambda item: float(item[0]))  # type: ignore[attr-defined]
        label_map = dict(labels)
        metric.add_metric([label_map.get(n, "") for n in names], buckets, entry["sum"])
    return [metric]
