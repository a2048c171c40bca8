"""What both kinds of KV transfer share: a request's L1 keys, and the metrics of what moved."""

from __future__ import annotations

import time

from lmcache_core.clients import ClientId
from lmcache_core.errors import InvalidKeyError
from lmcache_core.lookup import DataPath, RequestKey, TransferKeys
from lmcache_core.metric_names import MetricFamily
from lmcache_core.ports import MetricsSink
from lmcache_frontends.zmq.instances import RequestFailed


class TransferSupport:
    """The L1 keys of a transfer request, and one place that reports requests, moved tokens
    and throughput (the same families for engine-driven and server-driven transfers)."""

    def __init__(self, data_path: DataPath, metrics: MetricsSink, chunk_size: int) -> None:
        self.data_path = data_path
        self.metrics = metrics
        self.chunk_size = chunk_size

    def transfer_keys(self, client: ClientId, key: RequestKey) -> TransferKeys:
        """The keys of one rank's transfer of `key` (a key without a worker id, or past the
        token cap, fails the request)."""
        try:
            return self.data_path.transfer_keys(key, client)
        except InvalidKeyError as exc:
            raise RequestFailed(str(exc)) from None

    def count_request(self, family: MetricFamily, key: RequestKey) -> None:
        self.metrics.inc(family.name, 1, model_name=key.model_name, cache_salt=key.cache_salt)

    def report_moved(
        self, tokens: MetricFamily, throughput: MetricFamily, key: RequestKey, chunks: int, object_size: int,
        started: float | None,
    ) -> None:
        """One request's moved chunks: their tokens, and the throughput since `started`."""
        self.metrics.inc(tokens.name, chunks * self.chunk_size, model_name=key.model_name, cache_salt=key.cache_salt)
        if chunks and started is not None:
            seconds = time.perf_counter() - started
            if seconds > 0:
                self.metrics.observe(throughput.name, chunks * object_size / seconds / 1e9)
