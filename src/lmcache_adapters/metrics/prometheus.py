"""PrometheusMetricsSink: the MetricsSink port over prometheus-client, one registry per instance."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from lmcache_core.metric_names import (
    ALL_FAMILIES,
    COUNTER,
    GAUGE,
    HISTOGRAM,
    TENANT_LABELS,
    UNKNOWN_METRIC,
    MetricFamily,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_LABEL_VALUES = 1000
"""Distinct values one label of one family may take; later values are reported as OVERFLOW_VALUE."""

OVERFLOW_VALUE = "other"

ScrapeSample = tuple[str, Mapping[str, str], float]
"""(family name, labels, value) produced by a scrape source."""

ScrapeSource = Callable[[], Iterable[ScrapeSample]]
"""Called on every scrape; reads components' cheap counters (never on the hot path)."""

CurrentSample = tuple[Mapping[str, str], str, float]
"""(labels, sample suffix: "" | "_total" | "_bucket" | "_sum" | "_count", value) of one family."""

DerivedSource = Callable[[Mapping[str, list[CurrentSample]]], Iterable[Metric]]
"""Called on every scrape with the current samples of every family, by family name; returns
whole metric families computed from them (other names for the same data, never new data)."""


def effective_labels(family: MetricFamily, labels_enabled: bool) -> tuple[str, ...]:
    """The label names a family is exported with (tenant labels dropped when disabled)."""
    if labels_enabled:
        return family.labels
    return tuple(name for name in family.labels if name not in TENANT_LABELS)


class _LabelCap:
    """Per-label sets of seen values, folding values beyond the cap into OVERFLOW_VALUE."""

    def __init__(self, names: Sequence[str], cap: int) -> None:
        self._seen: list[set[str]] = [set() for _ in names]
        self._cap = cap

    def fold(self, values: Sequence[str]) -> tuple[tuple[str, ...], bool]:
        out = []
        folded = False
        for seen, value in zip(self._seen, values, strict=True):
            if value not in seen:
                if len(seen) >= self._cap:
                    value = OVERFLOW_VALUE
                    folded = True
                else:
                    seen.add(value)
            out.append(value)
        return tuple(out), folded


class _Family:
    """A declared family: the prometheus-client metric plus a cache of its labelled children."""

    def __init__(self, spec: MetricFamily, metric: Any, labelnames: tuple[str, ...], cap: int) -> None:
        self.spec = spec
        self.kind = spec.kind
        self.metric = metric
        self.labelnames = labelnames
        self._children: dict[tuple[str, ...], Any] = {}
        self._cap = _LabelCap(labelnames, cap)
        self._lock = threading.Lock()

    def child(self, labels: Mapping[str, Any]) -> Any:
        if not self.labelnames:
            return self.metric
        key = tuple([str(labels.get(name, "")) for name in self.labelnames])
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.get(key)
                if child is None:
                    values, folded = self._cap.fold(key)
                    child = self.metric.labels(*values)
                    # Folded keys are not cached: the cache must stay as bounded as the series.
                    if not folded:
                        self._children[key] = child
        return child


@dataclass
class _State:
    registry: CollectorRegistry
    families: dict[str, _Family]
    unknown: _Family


@dataclass
class _PushedGauges:
    """Values set through `set()` on families that are otherwise computed at scrape time."""

    values: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)


class PrometheusMetricsSink:
    """MetricsSink backed by its own CollectorRegistry (never the process-global one).

    Every family of `lmcache_core.metric_names` is declared up-front. `labels_enabled=False`
    drops the tenant labels (`model_name`, `cache_salt`); each label of each family keeps at
    most `max_label_values` distinct values (the rest read "other"). A report to an unknown
    name, of the wrong kind, or with a bad value never raises: it is counted in
    `lmcache_mp_unknown_metric_total{name}` and logged once. Scraped families come from
    sources added with `add_scrape_source`, evaluated only when /metrics is read."""

    def __init__(
        self,
        *,
        labels_enabled: bool = True,
        max_label_values: int = DEFAULT_MAX_LABEL_VALUES,
        families: Iterable[MetricFamily] = ALL_FAMILIES,
    ) -> None:
        if max_label_values < 1:
            raise ValueError(f"max_label_values must be >= 1, got {max_label_values}")
        self.labels_enabled = labels_enabled
        self.max_label_values = max_label_values
        self._specs = {f.name: f for f in families}
        self._specs.setdefault(UNKNOWN_METRIC.name, UNKNOWN_METRIC)
        self._lock = threading.Lock()
        self._sources: list[tuple[str, ScrapeSource]] = []
        self._derived: list[tuple[str, DerivedSource]] = []
        self._pushed = _PushedGauges()
        # Scraped counters are read from components that never reset; reset() records their
        # values here and the exposition subtracts them.
        self._baselines: dict[tuple[str, tuple[str, ...]], float] = {}
        self._logged: set[str] = set()
        self._state = self._build()

    # -- the port ------------------------------------------------------------------------

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        family = self._state.families.get(name)
        if family is None or family.kind != COUNTER:
            self._misreport(name, "inc")
            return
        try:
            family.child(labels).inc(amount)
        except Exception as exc:  # a negative amount, an odd label value: never fail the caller
            self._misreport(name, f"inc: {type(exc).__name__}: {exc}")

    def set(self, name: str, value: float, **labels: str) -> None:
        family = self._state.families.get(name)
        if family is None:
            spec = self._specs.get(name)
            if spec is not None and spec.scraped and spec.kind == GAUGE:
                self._push_gauge(spec, value, labels)
                return
            self._misreport(name, "set")
            return
        if family.kind != GAUGE:
            self._misreport(name, "set")
            return
        try:
            family.child(labels).set(value)
        except Exception as exc:
            self._misreport(name, f"set: {type(exc).__name__}: {exc}")

    def observe(self, name: str, value: float, **labels: str) -> None:
        family = self._state.families.get(name)
        if family is None or family.kind != HISTOGRAM:
            self._misreport(name, "observe")
            return
        try:
            family.child(labels).observe(value)
        except Exception as exc:
            self._misreport(name, f"observe: {type(exc).__name__}: {exc}")

    # -- exposition and control ----------------------------------------------------------

    @property
    def registry(self) -> CollectorRegistry:
        """The current registry (replaced by `reset()`)."""
        return self._state.registry

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its Content-Type."""
        return generate_latest(self._state.registry), CONTENT_TYPE_LATEST

    def reset(self) -> None:
        """Every counter and histogram back to zero (tests and benchmarks, not production)."""
        baselines: dict[tuple[str, tuple[str, ...]], float] = {}
        for spec, values, value in self._scrape(raw=True):
            if spec.kind == COUNTER:
                baselines[(spec.name, values)] = value
        state = self._build()
        with self._lock:
            self._baselines = baselines
            self._state = state

    def add_scrape_source(self, name: str, source: ScrapeSource) -> None:
        """Add (or replace, by `name`) a callable read on every scrape. It yields
        (family name, labels, value) for scraped families; its exceptions are logged and its
        samples skipped, so a broken component never breaks /metrics."""
        with self._lock:
            self._sources = [(n, s) for n, s in self._sources if n != name]
            self._sources.append((name, source))

    def add_derived_source(self, name: str, source: DerivedSource) -> None:
        """Add (or replace, by `name`) families computed at scrape time from this sink's own
        families (e.g. LMCache 0.5.0's names for them). Errors are logged, never raised."""
        with self._lock:
            self._derived = [(n, s) for n, s in self._derived if n != name]
            self._derived.append((name, source))

    def current(
        self, scraped: Iterable[tuple[MetricFamily, tuple[str, ...], float]] | None = None
    ) -> dict[str, list[CurrentSample]]:
        """Every family's samples now, by family name (reported and scraped alike; `scraped`:
        the scrape sources' samples when the caller already read them)."""
        out: dict[str, list[CurrentSample]] = {}
        for name, family in self._state.families.items():
            prefix = family.spec.exported_name
            rows = out.setdefault(name, [])
            for metric in family.metric.collect():
                for sample in metric.samples:
                    suffix = sample.name[len(prefix) :]
                    if suffix != "_created":
                        rows.append((dict(sample.labels), suffix, float(sample.value)))
        for spec, values, value in self._scrape() if scraped is None else scraped:
            labels = dict(zip(effective_labels(spec, self.labels_enabled), values, strict=True))
            out.setdefault(spec.name, []).append((labels, "_total" if spec.kind == COUNTER else "", value))
        return out

    def collect_derived(self, scraped: Iterable[tuple[MetricFamily, tuple[str, ...], float]] | None = None) -> list[Metric]:
        with self._lock:
            derived = list(self._derived)
        if not derived:
            return []
        current = self.current(scraped)
        out: list[Metric] = []
        for name, source in derived:
            try:
                out.extend(source(current))
            except Exception:
                if name not in self._logged:
                    self._logged.add(name)
                    log.exception("derived metrics source %s failed (logged once)", name)
        return out

    def remove_scrape_source(self, name: str) -> None:
        with self._lock:
            self._sources = [(n, s) for n, s in self._sources if n != name]

    def family(self, name: str) -> MetricFamily | None:
        """The declared family of `name` (None when unknown)."""
        return self._specs.get(name)

    # -- internals -----------------------------------------------------------------------

    def _build(self) -> _State:
        registry = CollectorRegistry(auto_describe=True)
        families: dict[str, _Family] = {}
        for spec in self._specs.values():
            if spec.scraped:
                continue
            labelnames = effective_labels(spec, self.labels_enabled)
            if spec.kind == COUNTER:
                metric: Any = Counter(spec.exported_name, spec.help, labelnames, registry=registry)
            elif spec.kind == GAUGE:
                metric = Gauge(spec.exported_name, spec.help, labelnames, registry=registry)
            elif spec.kind == HISTOGRAM:
                metric = Histogram(
                    spec.exported_name, spec.help, labelnames, registry=registry, buckets=spec.buckets or Histogram.DEFAULT_BUCKETS
                )
            else:
                raise ValueError(f"metric family {spec.name!r} has unknown kind {spec.kind!r}")
            families[spec.name] = _Family(spec, metric, labelnames, self.max_label_values)
        registry.register(_ScrapeCollector(self))
        unknown = families[UNKNOWN_METRIC.name]
        return _State(registry, families, unknown)

    def _misreport(self, name: str, what: str) -> None:
        try:
            self._state.unknown.child({"name": name}).inc()
        except Exception:  # never let accounting of a bug become a bug on the hot path
            pass
        if name not in self._logged and len(self._logged) < self.max_label_values:
            self._logged.add(name)
            spec = self._specs.get(name)
            detail = f"declared as {spec.kind}" if spec else "not declared in lmcache_core.metric_names"
            log.warning("metric %r misreported (%s; %s); counting it in %s", name, what, detail, UNKNOWN_METRIC.exported_name)

    def _push_gauge(self, spec: MetricFamily, value: float, labels: Mapping[str, Any]) -> None:
        names = effective_labels(spec, self.labels_enabled)
        key = (spec.name, tuple(str(labels.get(n, "")) for n in names))
        with self._lock:
            if key not in self._pushed.values and len(self._pushed.values) >= self.max_label_values:
                return
            self._pushed.values[key] = float(value)

    def _scrape(self, *, raw: bool = False) -> Iterator[tuple[MetricFamily, tuple[str, ...], float]]:
        """(spec, label values, value) of every scraped sample; counters minus their baseline
        unless `raw`. Later samples of the same series replace earlier ones."""
        with self._lock:
            sources = list(self._sources)
            pushed = dict(self._pushed.values)
            baselines = self._baselines
        seen: dict[tuple[str, tuple[str, ...]], tuple[MetricFamily, float]] = {}
        for (name, values), value in pushed.items():
            spec = self._specs[name]
            seen[(name, values)] = (spec, value)
        for source_name, source in sources:
            try:
                samples = list(source())
            except Exception:
                if source_name not in self._logged:
                    self._logged.add(source_name)
                    log.exception("metrics scrape source %s failed (logged once)", source_name)
                continue
            for name, labels, value in samples:
                spec = self._specs.get(name)
                if spec is None or not spec.scraped:
                    self._misreport(name, f"scrape source {source_name}")
                    continue
                names = effective_labels(spec, self.labels_enabled)
                values = tuple(str(labels.get(n, "")) for n in names)
                key = (name, values)
                if key in seen and spec.kind == COUNTER and not self.labels_enabled:
                    # Tenant labels dropped: series that differed only by them add up.
                    value += seen[key][1]
                seen[key] = (spec, float(value))
        for (name, values), (spec, value) in seen.items():
            if spec.kind == COUNTER and not raw:
                value = max(0.0, value - baselines.get((name, values), 0.0))
            yield spec, values, value

    def collect_scraped(self, scraped: Iterable[tuple[MetricFamily, tuple[str, ...], float]] | None = None) -> list[Metric]:
        """The scraped families as prometheus-client metric families (used by the collector)."""
        out: dict[str, Metric] = {}
        for spec, values, value in self._scrape() if scraped is None else scraped:
            metric = out.get(spec.name)
            if metric is None:
                labelnames = list(effective_labels(spec, self.labels_enabled))
                if spec.kind == COUNTER:
                    metric = CounterMetricFamily(spec.exported_name, spec.help, labels=labelnames)
                else:
                    metric = GaugeMetricFamily(spec.exported_name, spec.help, labels=labelnames)
                out[spec.name] = metric
            metric.add_metric(list(values), value)  # type: ignore[attr-defined]
        return list(out.values())


class _ScrapeCollector:
    """Custom collector: evaluates the sink's scrape sources at exposition time."""

    def __init__(self, sink: PrometheusMetricsSink) -> None:
        self._sink = sink

    def collect(self) -> Iterable[Metric]:
        scraped = list(self._sink._scrape())  # the sources run once per exposition
        return [*self._sink.collect_scraped(scraped), *self._sink.collect_derived(scraped)]

    def describe(self) -> list[Metric]:
        # Empty: the families vary with the configured components; no name clash is possible
        # because scraped families are never declared as ordinary metrics.
        return []
