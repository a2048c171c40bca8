"""L2Instruments: the metrics every L2 adapter reports, under one label scheme."""

from __future__ import annotations

from lmcache_core.ports import MetricsSink, NullMetricsSink


class L2Instruments:
    """Counters of one configured adapter, always labelled `adapter=<configured name>` and
    `kind=<kind>`: the wrappers and the backends that detect something themselves (dax finding
    a corrupt object while migrating) report through the same object, so no two places label
    the same family differently."""

    def __init__(self, metrics: MetricsSink | None, *, adapter: str, kind: str) -> None:
        self._metrics: MetricsSink = metrics if metrics is not None else NullMetricsSink()
        self.adapter = adapter
        self.kind = kind

    def checksum_failure(self) -> None:
        """An object failed verification on read (and was removed)."""
        self._metrics.inc("l2_checksum_failures", adapter=self.adapter, kind=self.kind)

    def circuit_opened(self) -> None:
        """The circuit breaker opened after repeated unreachable-backend failures."""
        self._metrics.inc("l2_circuit_opened", adapter=self.adapter, kind=self.kind)
