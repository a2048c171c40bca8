"""Metrics adapters: the Prometheus implementation of the core's MetricsSink port."""

from lmcache_adapters.metrics.compat import LMCACHE_050_FAMILIES, LegacyFamily, legacy_metrics
from lmcache_adapters.metrics.prometheus import DEFAULT_MAX_LABEL_VALUES, PrometheusMetricsSink
from lmcache_adapters.metrics.sources import L1MetricsListener, stack_source

__all__ = [
    "DEFAULT_MAX_LABEL_VALUES",
    "LMCACHE_050_FAMILIES",
    "L1MetricsListener",
    "LegacyFamily",
    "PrometheusMetricsSink",
    "legacy_metrics",
    "stack_source",
]
