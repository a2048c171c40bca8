"""The metric families every component reports through the MetricsSink port: name, type, labels, help.

Components pass `family.name` to `MetricsSink.inc/set/observe` (names carry no `lmcache_mp_`
prefix; the Prometheus adapter adds it, and `_total` for counters). Labels a family does not
declare are dropped; declared labels a caller leaves out are reported as "". The tenant labels
(`model_name`, `cache_salt`) disappear when the server runs with `--metrics-labels off`.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "lmcache_mp_"
"""Prefix of every exported family name."""

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

TENANT_LABELS = ("model_name", "cache_salt")
"""High-cardinality labels a fleet may switch off (`--metrics-labels off`)."""

THROUGHPUT_BUCKETS_GBPS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
"""Histogram buckets of the throughput families, in GB/s (10^9 bytes per second)."""

LATENCY_BUCKETS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""Histogram buckets of the duration families, in seconds."""


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """One family: `name` without prefix, `kind` (counter/gauge/histogram), help text, label names.

    `scraped` families are computed when /metrics is read (from components' own cheap counters),
    so the hot path pays nothing for them; components never report them through the sink."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    scraped: bool = False

    @property
    def exported_name(self) -> str:
        """The name Prometheus shows (counters get `_total` appended on exposition)."""
        return PREFIX + self.name


_T = TENANT_LABELS


def _counter(name: str, help: str, *labels: str) -> MetricFamily:
    return MetricFamily(name, COUNTER, help, labels)


def _gauge(name: str, help: str, *labels: str, scraped: bool = True) -> MetricFamily:
    return MetricFamily(name, GAUGE, help, labels, scraped=scraped)


def _histogram(name: str, help: str, *labels: str, buckets: tuple[float, ...] = THROUGHPUT_BUCKETS_GBPS) -> MetricFamily:
    return MetricFamily(name, HISTOGRAM, help, labels, buckets)


# -- data path (lookups, stores, retrieves; reported by the ZeroMQ data path) -----------------

LOOKUP_REQUESTS = _counter("lookup_requests", "Lookup requests received from engines.", *_T)
LOOKUP_TOKENS = _counter("lookup_tokens", "Tokens asked for by lookup requests.", *_T)
LOOKUP_HIT_TOKENS = _counter(
    "lookup_tier_hit_tokens", "Tokens found by lookups, by the tier that held them (tier=l1|l2).", "tier", *_T
)
"""Exported as lmcache_mp_lookup_tier_hit_tokens_total; the L1+L2 sum per model and salt is
LMCache 0.5.0's lmcache_mp_lookup_hit_tokens_total (see lmcache_adapters.metrics.compat)."""
STORE_REQUESTS = _counter("store_requests", "Store requests received from engines.", *_T)
STORED_TOKENS = _counter("stored_tokens", "Tokens written into L1 by store requests.", *_T)
RETRIEVE_REQUESTS = _counter("retrieve_requests", "Retrieve requests received from engines.", *_T)
RETRIEVED_TOKENS = _counter("retrieved_tokens", "Tokens copied from L1 into engines by retrieves.", *_T)
STORE_THROUGHPUT_GBPS = _histogram("store_throughput_gbps", "Throughput of engine -> L1 stores, in GB/s.")
RETRIEVE_THROUGHPUT_GBPS = _histogram("retrieve_throughput_gbps", "Throughput of L1 -> engine retrieves, in GB/s.")

# -- L1 (chunk counters from an L1 listener; usage read at scrape time) ------------------------

L1_CHUNKS_WRITTEN = _counter("l1_chunks_written", "Chunks whose L1 write finished (stores and L2 prefetches).", *_T)
L1_CHUNKS_READ = _counter(
    "l1_chunks_read",
    "Chunks whose L1 read finished (an engine retrieve, an L2 write-back, a lookup lock given back).",
    *_T,
)
L1_CHUNKS_EVICTED = _counter("l1_chunks_evicted", "Chunks evicted from L1 to make room.", *_T)
L1_ALLOCATION_FAILURES = MetricFamily(
    "l1_allocation_failures", COUNTER, "L1 write reservations refused for lack of memory.", scraped=True
)
L1_EVICTION_CYCLES = MetricFamily(
    "l1_eviction_cycles", COUNTER, "Runs of the L1 eviction controller.", scraped=True
)
L1_EVICTION_PRESSURE_CYCLES = MetricFamily(
    "l1_eviction_pressure_cycles", COUNTER,
    "Runs of the L1 eviction controller with usage at or above the watermark (the policy picked victims).",
    scraped=True,
)
L1_USAGE_BYTES = _gauge("l1_usage_bytes", "Bytes of the L1 pool in use.")
L1_CAPACITY_BYTES = _gauge("l1_capacity_bytes", "Size of the L1 pool in bytes.")
L1_USAGE_RATIO = _gauge("l1_usage_ratio", "Fraction of the L1 pool in use (0..1).")
L1_OBJECTS = _gauge("l1_objects", "Objects (chunks) held in L1.")

# -- L2 write-back (store controller) ---------------------------------------------------------

L2_STORES_SUBMITTED = _counter("l2_stores_submitted", "Objects submitted for write-back to an L2 adapter.", "adapter")
L2_STORES_COMPLETED = _counter("l2_stores_completed", "Objects durably written to an L2 adapter.", "adapter")
L2_STORES_FAILED = _counter("l2_stores_failed", "Objects an L2 adapter failed to store.", "adapter")
L2_STORE_BATCHES_SUBMITTED = _counter(
    "l2_store_batches_submitted", "Write-back batches submitted to an L2 adapter.", "adapter"
)
L2_STORE_BATCHES_COMPLETED = _counter(
    "l2_store_batches_completed", "Write-back batches an L2 adapter answered (whatever the outcome).", "adapter"
)
L2_STORE_THROUGHPUT_GBPS = _histogram("l2_store_throughput_gbps", "Throughput of L1 -> L2 write-back batches, in GB/s.")
L2_STORES_IN_FLIGHT = _gauge("l2_stores_in_flight", "Objects being written back to L2 right now.")
L2_STORES_UNWRITTEN_AT_SHUTDOWN = _counter(
    "l2_stores_unwritten_at_shutdown",
    "Objects queued or in flight for write-back when a shutdown stopped waiting for them (lost).",
)
L2_STORE_QUEUE = _gauge("l2_store_queue", "Objects waiting for write-back to L2 (the write-back lag).")

# -- L2 prefetch (prefetch controller) --------------------------------------------------------

PREFETCH_LOOKUPS = _counter("prefetch_lookups", "Prefetch jobs that looked keys up in L2.")
PREFETCH_LOOKUP_KEYS = _counter("prefetch_lookup_keys", "Keys prefetch jobs looked up in L2.")
PREFETCH_HITS = _counter("prefetch_hits", "Keys found in L2 by prefetch lookups (the loadable prefix).")
PREFETCH_LOAD_BATCHES = _counter(
    "prefetch_load_batches", "Load batches a prefetch submitted to an L2 adapter.", "adapter"
)
PREFETCH_LOAD_KEYS = _counter("prefetch_load_keys", "Keys a prefetch submitted to an L2 adapter for loading.", "adapter")
PREFETCH_LOAD_BATCHES_COMPLETED = _counter(
    "prefetch_load_batches_completed", "Load batches an L2 adapter answered (whatever the outcome).", "adapter"
)
PREFETCH_LOADS = _counter("prefetch_loads", "Objects loaded from an L2 adapter into L1.", "adapter")
PREFETCH_FAILURES = _counter("prefetch_failures", "Prefetch jobs or loads that failed, by reason.", "reason")
L2_LOAD_THROUGHPUT_GBPS = _histogram("l2_load_throughput_gbps", "Throughput of L2 -> L1 prefetch loads, in GB/s.")
L2_LOADS_IN_FLIGHT = _gauge("l2_loads_in_flight", "Prefetch jobs loading from L2 right now.")
PREFETCH_JOBS = _gauge("prefetch_jobs", "Prefetch jobs queued or running.")

# -- L2 adapters ------------------------------------------------------------------------------

L2_USAGE_BYTES = _gauge(
    "l2_usage_bytes", "Bytes stored by an L2 adapter (l2_name: the same name, LMCache 0.5.0's label).", "adapter", "l2_name"
)
L2_ADAPTERS = _gauge("l2_adapters", "L2 adapters configured, by state (active; draining is always 0 here).", "state")
L2_CAPACITY_BYTES = _gauge("l2_capacity_bytes", "Capacity of an L2 adapter in bytes (absent when unbounded).", "adapter")
L2_EVICTED_OBJECTS = _counter("l2_evicted_objects", "Objects evicted from an L2 adapter by its eviction policy.", "adapter")
L2_CHECKSUM_FAILURES = _counter(
    "l2_checksum_failures", "Objects read from L2 whose checksum did not match.", "adapter", "kind"
)
L2_CIRCUIT_OPENED = _counter("l2_circuit_opened", "Times an L2 adapter's circuit breaker opened.", "adapter", "kind")

# -- engine, sessions, instances --------------------------------------------------------------

ACTIVE_SESSIONS = _gauge("active_sessions", "Lookup/retrieve sessions currently open.")
REGISTERED_INSTANCES = _gauge("registered_instances", "Engine instances (GPU workers) registered with the server.")
PERIODIC_THREADS_UNHEALTHY = _gauge(
    "periodic_threads_unhealthy", "Critical or high periodic threads that are dead, stalled or failing."
)

# -- the fleet coordinator link (--coordinator-url; read at scrape time) ----------------------

COORDINATOR_REGISTERED = _gauge(
    "coordinator_registered", "1 while this server is registered with its fleet coordinator, else 0."
)
COORDINATOR_BUFFERED_EVENTS = _gauge(
    "coordinator_buffered_events", "Cache events waiting to be sent to the coordinator."
)
COORDINATOR_DROPPED_EVENTS = MetricFamily(
    "coordinator_dropped_events", COUNTER,
    "Cache events dropped because the bounded buffer was full (the coordinator down or slow).", scraped=True,
)
COORDINATOR_SENT_BATCHES = MetricFamily(
    "coordinator_sent_batches", COUNTER, "Cache-event batches the coordinator accepted.", scraped=True
)
COORDINATOR_FAILED_CALLS = MetricFamily(
    "coordinator_failed_calls", COUNTER,
    "Calls to the coordinator that failed (unreachable, timed out, or answered with an error).", scraped=True,
)
COORDINATOR_UNREPORTED_EVENTS = MetricFamily(
    "coordinator_unreported_events", COUNTER,
    "L1 events and capacity declarations an LMCache 0.5.0 coordinator has no route for.", scraped=True,
)

# -- admin HTTP API ---------------------------------------------------------------------------

HTTP_REQUESTS = _counter("http_requests", "Admin API requests by route template, method and status.", "route", "method", "status")
HTTP_REQUEST_DURATION_SECONDS = _histogram(
    "http_request_duration_seconds", "Admin API request durations by route template.", "route",
    buckets=LATENCY_BUCKETS_SECONDS,
)

# -- the sink itself --------------------------------------------------------------------------

UNKNOWN_METRIC = _counter("unknown_metric", "Reports to metric names no family declares (a component bug).", "name")

ALL_FAMILIES: tuple[MetricFamily, ...] = tuple(v for v in list(globals().values()) if isinstance(v, MetricFamily))
"""Every family, in declaration order."""

FAMILIES_BY_NAME: dict[str, MetricFamily] = {f.name: f for f in ALL_FAMILIES}
