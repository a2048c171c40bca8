"""PrometheusMetricsSink: families, labels on/off, cardinality cap, unknown names, reset, scrape sources."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lmcache_adapters.metrics import PrometheusMetricsSink
from lmcache_core import metric_names as mn
from lmcache_core.ports import MetricsSink


def samples(sink: PrometheusMetricsSink) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = sink.render()
    assert content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(sink: PrometheusMetricsSink, metric: str, /, **labels: str) -> float | None:
    return samples(sink).get((metric, tuple(sorted(labels.items()))))


def test_is_a_metrics_sink_and_declares_every_family_up_front() -> None:
    sink = PrometheusMetricsSink()
    assert isinstance(sink, MetricsSink)
    body = sink.render()[0].decode()
    for family in mn.ALL_FAMILIES:
        if not family.scraped:
            assert f"# TYPE {family.exported_name}" in body, family.name


def test_counters_gauges_histograms_are_exported_with_prefix_and_labels() -> None:
    sink = PrometheusMetricsSink()
    sink.inc(mn.L2_STORES_COMPLETED.name, 3, adapter="fs")
    sink.inc(mn.L2_STORES_COMPLETED.name, adapter="fs")
    sink.observe(mn.L2_STORE_THROUGHPUT_GBPS.name, 3.0)
    sink.inc(mn.LOOKUP_HIT_TOKENS.name, 256, tier="l1", model_name="m", cache_salt="t")
    assert value(sink, "lmcache_mp_l2_stores_completed_total", adapter="fs") == 4
    assert value(sink, "lmcache_mp_l2_store_throughput_gbps_bucket", le="4.0") == 1
    assert value(sink, "lmcache_mp_l2_store_throughput_gbps_bucket", le="2.0") == 0
    assert value(sink, "lmcache_mp_lookup_tier_hit_tokens_total", tier="l1", model_name="m", cache_salt="t") == 256


def test_two_sinks_do_not_share_state() -> None:
    a, b = PrometheusMetricsSink(), PrometheusMetricsSink()
    a.inc(mn.PREFETCH_LOOKUPS.name, 5)
    assert value(a, "lmcache_mp_prefetch_lookups_total") == 5
    assert value(b, "lmcache_mp_prefetch_lookups_total") == 0


def test_tenant_labels_can_be_switched_off() -> None:
    sink = PrometheusMetricsSink(labels_enabled=False)
    sink.inc(mn.LOOKUP_REQUESTS.name, model_name="m1", cache_salt="a")
    sink.inc(mn.LOOKUP_REQUESTS.name, model_name="m2", cache_salt="b")
    sink.inc(mn.LOOKUP_HIT_TOKENS.name, 10, tier="l2", model_name="m1", cache_salt="a")
    assert value(sink, "lmcache_mp_lookup_requests_total") == 2
    assert value(sink, "lmcache_mp_lookup_tier_hit_tokens_total", tier="l2") == 10
    assert "model_name" not in sink.render()[0].decode()


def test_label_values_beyond_the_cap_fold_into_other() -> None:
    sink = PrometheusMetricsSink(max_label_values=3)
    for i in range(10):
        sink.inc(mn.LOOKUP_REQUESTS.name, model_name=f"m{i}", cache_salt="")
    got = samples(sink)
    series = {k: v for k, v in got.items() if k[0] == "lmcache_mp_lookup_requests_total"}
    assert len(series) == 4
    assert series[("lmcache_mp_lookup_requests_total", (("cache_salt", ""), ("model_name", "other")))] == 7


def test_unknown_or_misused_names_are_counted_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    sink = PrometheusMetricsSink()
    sink.inc("no_such_metric")
    sink.inc("no_such_metric", 2)
    sink.observe(mn.L2_STORES_COMPLETED.name, 1.0)  # a counter observed like a histogram
    sink.inc(mn.PREFETCH_LOOKUPS.name, -1)  # counters only go up
    assert value(sink, "lmcache_mp_unknown_metric_total", name="no_such_metric") == 2
    assert value(sink, "lmcache_mp_unknown_metric_total", name=mn.L2_STORES_COMPLETED.name) == 1
    assert value(sink, "lmcache_mp_unknown_metric_total", name=mn.PREFETCH_LOOKUPS.name) == 1
    assert sum("no_such_metric" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_undeclared_labels_are_dropped_and_missing_ones_empty() -> None:
    sink = PrometheusMetricsSink()
    sink.inc(mn.L2_STORES_FAILED.name, 2, adapter="s3", bogus="x")
    sink.inc(mn.L2_STORES_FAILED.name)
    assert value(sink, "lmcache_mp_l2_stores_failed_total", adapter="s3") == 2
    assert value(sink, "lmcache_mp_l2_stores_failed_total", adapter="") == 1


def test_scrape_sources_are_read_at_exposition_and_broken_ones_skipped() -> None:
    sink = PrometheusMetricsSink()
    calls = []

    def good() -> list[tuple[str, dict[str, str], float]]:
        calls.append(1)
        return [(mn.L1_USAGE_BYTES.name, {}, 1024), (mn.L2_USAGE_BYTES.name, {"adapter": "fs", "l2_name": "fs"}, 7)]

    def broken() -> list[tuple[str, dict[str, str], float]]:
        raise RuntimeError("component gone")

    sink.add_scrape_source("good", good)
    sink.add_scrape_source("broken", broken)
    assert not calls  # nothing on the hot path
    got = samples(sink)
    assert got[("lmcache_mp_l1_usage_bytes", ())] == 1024
    assert got[("lmcache_mp_l2_usage_bytes", (("adapter", "fs"), ("l2_name", "fs")))] == 7
    assert len(calls) == 1


def test_reset_zeroes_counters_histograms_and_scraped_counters_but_keeps_gauges() -> None:
    sink = PrometheusMetricsSink()
    oom = [5.0]
    sink.add_scrape_source(
        "l1", lambda: [(mn.L1_ALLOCATION_FAILURES.name, {}, oom[0]), (mn.L1_OBJECTS.name, {}, 9)]
    )
    sink.inc(mn.L2_STORES_SUBMITTED.name, 10, adapter="a")
    sink.observe(mn.L2_LOAD_THROUGHPUT_GBPS.name, 1.0)
    sink.reset()
    assert value(sink, "lmcache_mp_l2_stores_submitted_total", adapter="a") is None
    assert value(sink, "lmcache_mp_l2_load_throughput_gbps_count") == 0
    assert value(sink, "lmcache_mp_l1_allocation_failures_total") == 0
    assert value(sink, "lmcache_mp_l1_objects") == 9
    oom[0] = 8.0
    sink.inc(mn.L2_STORES_SUBMITTED.name, 1, adapter="a")
    assert value(sink, "lmcache_mp_l1_allocation_failures_total") == 3
    assert value(sink, "lmcache_mp_l2_stores_submitted_total", adapter="a") == 1


def test_set_on_a_scraped_gauge_is_exported() -> None:
    sink = PrometheusMetricsSink()
    sink.set(mn.ACTIVE_SESSIONS.name, 4)
    assert value(sink, "lmcache_mp_active_sessions") == 4


def test_every_family_in_metric_names_is_well_formed() -> None:
    names = [f.name for f in mn.ALL_FAMILIES]
    assert len(names) == len(set(names))
    for family in mn.ALL_FAMILIES:
        assert family.kind in (mn.COUNTER, mn.GAUGE, mn.HISTOGRAM)
        assert not family.name.startswith(mn.PREFIX) and not family.name.endswith("_total")
        assert family.help.endswith(".")
        if family.kind == mn.HISTOGRAM:
            assert list(family.buckets) == sorted(family.buckets)
