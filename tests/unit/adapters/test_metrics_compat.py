"""LMCache 0.5.0's names, computed from our families at scrape time."""

from __future__ import annotations

import functools

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lmcache_adapters.metrics import PrometheusMetricsSink, legacy_metrics
from lmcache_core import metric_names as mn


def exposition(sink: PrometheusMetricsSink) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(sink.registry).decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sink_with_compat(*, labels: bool = True, chunk_size: int = 256) -> PrometheusMetricsSink:
    sink = PrometheusMetricsSink(labels_enabled=labels)
    sink.add_derived_source("lmcache-0.5.0", functools.partial(legacy_metrics, chunk_size=chunk_size))
    return sink


def test_tier_and_tenant_labels_become_0_5_0_s() -> None:
    sink = sink_with_compat()
    sink.inc(mn.LOOKUP_HIT_TOKENS.name, 512, tier="l1", model_name="m", cache_salt="")
    sink.inc(mn.LOOKUP_HIT_TOKENS.name, 256, tier="l2", model_name="m", cache_salt="")
    sink.inc(mn.LOOKUP_TOKENS.name, 1024, model_name="m", cache_salt="")
    sink.inc(mn.L1_CHUNKS_WRITTEN.name, 3, model_name="m", cache_salt="")
    sink.inc(mn.L1_CHUNKS_WRITTEN.name, 2, model_name="n", cache_salt="t")
    sink.inc(mn.RETRIEVED_TOKENS.name, 768, model_name="m", cache_salt="")
    sink.inc(mn.L2_STORE_BATCHES_COMPLETED.name, 2, adapter="fs")
    got = exposition(sink)
    tenant = frozenset({("model_name", "m"), ("cache_salt", "")})
    # The tier is summed away so hit / requested matches series by series, as in 0.5.0.
    assert got[("lmcache_mp_lookup_hit_tokens_total", tenant)] == 768
    assert got[("lmcache_mp_lookup_requested_tokens_total", tenant)] == 1024
    # Chunk counters: cache_salt only when set, model summed away.
    assert got[("lmcache_mp_l1_write_chunks_total", frozenset())] == 3
    assert got[("lmcache_mp_l1_write_chunks_total", frozenset({("cache_salt", "t")}))] == 2
    assert got[("lmcache_mp_num_chunks_loaded_total", tenant)] == 3  # tokens / chunk size
    assert got[("lmcache_mp_l2_store_completed_requests_total", frozenset({("l2_name", "fs")}))] == 2
    # Ours are still there, unchanged.
    assert got[("lmcache_mp_lookup_tier_hit_tokens_total", tenant | {("tier", "l2")})] == 256


def test_histograms_keep_their_buckets_under_the_0_5_0_name() -> None:
    sink = sink_with_compat()
    for value in (0.3, 3.0, 30.0):
        sink.observe(mn.L2_STORE_THROUGHPUT_GBPS.name, value)
    got = exposition(sink)
    name = "lmcache_mp_l2_store_throughput_GB_per_second"
    assert got[(f"{name}_count", frozenset())] == 3
    assert abs(got[(f"{name}_sum", frozenset())] - 33.3) < 1e-9
    assert got[(f"{name}_bucket", frozenset({("le", "0.5")}))] == 1
    assert got[(f"{name}_bucket", frozenset({("le", "+Inf")}))] == 3


def test_with_tenant_labels_off_the_0_5_0_names_have_none_either() -> None:
    sink = sink_with_compat(labels=False)
    sink.inc(mn.LOOKUP_TOKENS.name, 10, model_name="m", cache_salt="x")
    assert exposition(sink)[("lmcache_mp_lookup_requested_tokens_total", frozenset())] == 10


def test_a_broken_derived_source_never_breaks_metrics() -> None:
    sink = PrometheusMetricsSink()

    def broken(current: object) -> list[object]:
        raise RuntimeError("boom")

    sink.add_derived_source("broken", broken)  # type: ignore[arg-type]
    sink.inc(mn.PREFETCH_LOOKUPS.name)
    assert exposition(sink)[("lmcache_mp_prefetch_lookups_total", frozenset())] == 1
