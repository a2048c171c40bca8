"""S3L2Adapter beyond the contract: outage and recovery, integrity, listing, credentials, config."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lmcache_adapters.l2 import s3 as s3_module
from lmcache_adapters.l2.breaker import CircuitBreaker
from lmcache_adapters.l2.integrity import HEADER_SIZE
from lmcache_adapters.l2.s3 import (
    S3_FIELDS,
    S3L2Adapter,
    S3UnavailableError,
    create_s3_adapter,
)
from lmcache_adapters.testing import make_key, tensor_payload
from lmcache_core.clock import ManualClock
from lmcache_core.errors import ConfigError
from lmcache_core.plugin.registry import L2AdapterRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/: the moto helper module
from lmcache_core.testing import poll_until
from s3_server import MotoServer, moto_server  # noqa: E402

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.fixture
def bucket(s3: MotoServer) -> str:
    # a fresh bucket per test: the outage test restarts moto, which forgets every bucket
    name = f"b-{uuid.uuid4().hex[:16]}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def make_adapter(s3: MotoServer, bucket: str) -> Iterator[Callable[..., S3L2Adapter]]:
    made: list[S3L2Adapter] = []

    def make(**overrides: Any) -> S3L2Adapter:
        kwargs: dict[str, Any] = {
            "bucket": bucket,
            "endpoint_url": s3.url,
            "prefix": "kv/",
            "connect_timeout": 1.0,
            "read_timeout": 3.0,
            "max_attempts": 1,
        }
        kwargs.update(overrides)
        adapter = S3L2Adapter(**kwargs)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.close()



def store(adapter: S3L2Adapter, keys: list[Any], payloads: list[memoryview]) -> list[bool]:
    return adapter.submit_store(keys, payloads).result(timeout=TIMEOUT)


def load(adapter: S3L2Adapter, keys: list[Any], sizes: list[int]) -> tuple[list[bool], list[bytearray]]:
    buffers = [bytearray(n) for n in sizes]
    ok = adapter.submit_load(keys, [memoryview(b) for b in buffers]).result(timeout=TIMEOUT)
    return ok, buffers


class RecordingMetrics:
    """A MetricsSink that remembers counter increments."""

    def __init__(self) -> None:
        self.counters: dict[str, float] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.counters[name] = self.counters.get(name, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        return None

    def observe(self, name: str, value: float, **labels: str) -> None:
        return None


# --------------------------------------------------------------------------- circuit breaker


def test_breaker_opens_after_threshold_and_probes_once_with_doubling_backoff() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=3, backoff_seconds=5, max_backoff_seconds=12, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # the streak is consecutive failures only
    assert not breaker.record_failure() and not breaker.record_failure()
    assert breaker.record_failure() is True
    assert breaker.state == "open"
    assert not breaker.try_begin_probe(), "no probe before the back-off has passed"
    clock.advance(5)
    assert breaker.try_begin_probe() is True
    assert breaker.state == "half_open"
    assert not breaker.try_begin_probe(), "exactly one probe at a time"
    breaker.end_probe(False)
    assert breaker.snapshot()["circuit_backoff_seconds"] == 10
    clock.advance(10)
    assert breaker.try_begin_probe()
    breaker.end_probe(False)
    assert breaker.snapshot()["circuit_backoff_seconds"] == 12, "back-off is capped"
    clock.advance(12)
    assert breaker.try_begin_probe()
    breaker.end_probe(True)
    assert breaker.state == "closed" and breaker.snapshot()["consecutive_failures"] == 0


# --------------------------------------------------------------------------- outage and recovery


def test_outage_fails_fast_reports_unhealthy_and_recovers_without_restart(
    s3: MotoServer, bucket: str, make_adapter: Callable[..., S3L2Adapter]
) -> None:
    clock = ManualClock()
    adapter = make_adapter(circuit_breaker_threshold=2, circuit_breaker_backoff_seconds=5, clock=clock)
    before, during = make_key(1), make_key(2)
    payload = tensor_payload(seed=1)
    assert store(adapter, [before], [payload]) == [True]
    assert adapter.report_status()["circuit"] == "closed"

    s3.stop()
    # While the circuit is still closed every operation tries the network and degrades quickly.
    for submit in (
        lambda: adapter.submit_store([during], [payload]),
        lambda: adapter.submit_lookup_and_lock([before]),
    ):
        started = time.monotonic()
        assert submit().result(timeout=TIMEOUT) == [False]
        # The bound under test, kept above the 1 s connect + 3 s read timeouts: a refused
        # connection fails in milliseconds, and only a hang past the configured timeouts trips it.
        assert time.monotonic() - started < 5.0
    status = adapter.report_status()
    assert status["is_healthy"] is False
    assert status["circuit"] == "open"
    assert status["last_error"]

    # Open: answered at once, without a network call.
    for fut in (
        adapter.submit_store([during], [payload]),
        adapter.submit_lookup_and_lock([before, during]),
        adapter.submit_load([before], [memoryview(bytearray(payload.nbytes))]),
    ):
        assert fut.done(), "an open circuit must fail fast"
        assert not any(fut.result())
    assert adapter.delete([before]) == [False]
    with pytest.raises(S3UnavailableError):
        adapter.list_keys(10)

    # A probe after the back-off that still finds no server re-opens with a doubled back-off.
    clock.advance(5.5)
    adapter.report_status()  # schedules the probe
    poll_until(lambda: adapter.report_status().get("circuit_backoff_seconds") == 10, what="the failed probe", timeout=TIMEOUT)
    assert adapter.report_status()["circuit"] == "open"

    s3.restart()  # same port, empty state
    s3.client().create_bucket(Bucket=bucket)
    assert adapter.submit_store([during], [payload]).done(), "still open until the back-off passes"
    clock.advance(10.5)
    adapter.report_status()
    poll_until(lambda: adapter.report_status()["circuit"] == "closed", what="the circuit to close", timeout=TIMEOUT)
    status = adapter.report_status()
    assert status["is_healthy"] is True and status["consecutive_failures"] == 0

    assert store(adapter, [during], [payload]) == [True]
    ok, buffers = load(adapter, [during, before], [payload.nbytes] * 2)
    assert ok == [True, False], "the restarted server lost `before`, and it must miss, not hang"
    assert bytes(buffers[0]) == bytes(payload)


# --------------------------------------------------------------------------- integrity


def test_checksum_failure_is_a_miss_deletes_the_object_and_counts(
    s3: MotoServer, bucket: str, make_adapter: Callable[..., S3L2Adapter]
) -> None:
    metrics = RecordingMetrics()
    adapter = make_adapter(metrics=metrics)
    key = make_key(3)
    payload = tensor_payload(seed=3)
    assert store(adapter, [key], [payload]) == [True]
    client = s3.client()
    name = adapter.object_name(key)
    blob = bytearray(client.get_object(Bucket=bucket, Key=name)["Body"].read())
    assert len(blob) == HEADER_SIZE + payload.nbytes
    blob[-1] ^= 0x80
    client.put_object(Bucket=bucket, Key=name, Body=bytes(blob))

    ok, _ = load(adapter, [key], [payload.nbytes])
    assert ok == [False]
    status = adapter.report_status()
    assert status["checksum_failures"] == 1
    assert status["stored_object_count"] == 0 and status["used_bytes"] == 0
    assert metrics.counters.get("l2_checksum_failures") == 1
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0, "the corrupt object was deleted"


def test_truncated_object_is_a_miss(s3: MotoServer, bucket: str, make_adapter: Callable[..., S3L2Adapter]) -> None:
    adapter = make_adapter()
    key = make_key(4)
    payload = tensor_payload(seed=4)
    store(adapter, [key], [payload])
    client = s3.client()
    name = adapter.object_name(key)
    blob = client.get_object(Bucket=bucket, Key=name)["Body"].read()
    client.put_object(Bucket=bucket, Key=name, Body=blob[: len(blob) // 2])  # a torn upload
    ok, _ = load(adapter, [key], [payload.nbytes])
    assert ok == [False]
    assert adapter.report_status()["checksum_failures"] == 1


# --------------------------------------------------------------------------- listing


def collect(adapter: S3L2Adapter, page_size: int, **filters: str) -> tuple[list[Any], int]:
    keys: list[Any] = []
    token: str | None = None
    for pages in range(1, 200):
        page = adapter.list_keys(page_size, token, **filters)
        assert len(page.keys) <= page_size
        keys.extend(page.keys)
        token = page.next_page_token
        if token is None:
            return keys, pages
    raise AssertionError("listing did not terminate")


def test_listing_spans_several_s3_pages_skips_foreign_names_and_filters(
    s3: MotoServer, bucket: str, make_adapter: Callable[..., S3L2Adapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "LIST_BATCH", 4)  # force ListObjectsV2 continuation
    monkeypatch.setattr(s3_module, "MAX_LIST_REQUESTS", 3)
    adapter = make_adapter()
    model_a, model_b = "org/model%a", "org/model-b"
    keys_a = [make_key(i, model_name=model_a) for i in range(7)]
    keys_b = [make_key(i, model_name=model_b, cache_salt="t1") for i in range(7, 12)]
    everything = keys_a + keys_b
    assert store(adapter, everything, [tensor_payload(64, seed=i) for i in range(len(everything))]) == [True] * 12
    client = s3.client()
    for junk in ("kv/garbage", "kv/a@b@c@d", "kv/m@00000000@0@zz", "kv/m@0000000@0@00", "kv/m@00000000@01@00",
                 "kv/org/x@00000000@0@00", "kv/m@00000000@0@00@", "outside-prefix"):
        client.put_object(Bucket=bucket, Key=junk, Body=b"not ours")

    listed, pages = collect(adapter, 5)
    assert sorted(listed, key=repr) == sorted(everything, key=repr) and len(listed) == 12
    assert pages >= 3
    assert set(collect(adapter, 2, model_name=model_a)[0]) == set(keys_a), "model filter (escaped prefix)"
    assert set(collect(adapter, 2, cache_salt="t1")[0]) == set(keys_b)
    assert collect(adapter, 2, model_name=model_a, cache_salt="t1")[0] == []
    assert collect(adapter, 3, model_name="org/model")[0] == [], "a model name that is a prefix of another"

    with pytest.raises(ValueError):
        adapter.list_keys(5, "not-a-token")
    with pytest.raises(ValueError):
        adapter.list_keys(0)


def test_usage_scan_counts_existing_objects_and_ignores_foreign_names(
    s3: MotoServer, bucket: str, make_adapter: Callable[..., S3L2Adapter]
) -> None:
    first = make_adapter()
    keys = [make_key(i, cache_salt="s" if i % 2 else "") for i in range(5)]
    store(first, keys, [tensor_payload(64 * (i + 1), seed=i) for i in range(5)])
    s3.client().put_object(Bucket=bucket, Key="kv/not-a-key", Body=b"x" * 1000)
    expected = first.usage()
    assert expected.used_bytes > 0

    second = make_adapter()  # a restart: it learns what is already in the bucket
    poll_until(lambda: second.report_status()["usage_scan"] == "done", what="the usage scan", timeout=TIMEOUT)
    assert second.usage() == expected
    status = second.report_status()
    assert status["stored_object_count"] == 5
    assert status["foreign_objects_seen"] == 1
    # load-buffer sizes for objects this process did not store (what the serde wrapper asks)
    assert second.stored_nbytes(keys + [make_key(99)]) == [64 * (i + 1) * 2 for i in range(5)] + [None]
    # the tracked usage follows later deletes
    assert second.delete(keys[:2]) == [True, True]
    assert second.usage().used_bytes == expected.used_bytes - sum(64 * (i + 1) * 2 + HEADER_SIZE for i in range(2))


def test_delete_batches_and_skips_locked_keys(
    make_adapter: Callable[..., S3L2Adapter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 3)
    adapter = make_adapter()
    keys = [make_key(i) for i in range(8)]
    store(adapter, keys, [tensor_payload(32, seed=i) for i in range(8)])
    assert adapter.submit_lookup_and_lock([keys[4]]).result(timeout=TIMEOUT) == [True]
    assert adapter.report_status()["locked_key_count"] == 1
    assert adapter.delete(keys + [keys[0]]) == [True] * 4 + [False] + [True] * 3 + [False]
    assert collect(adapter, 100)[0] == [keys[4]]


def test_create_bucket_option(s3: MotoServer, make_adapter: Callable[..., S3L2Adapter]) -> None:
    fresh = f"new-{uuid.uuid4().hex[:12]}"
    adapter = make_adapter(bucket=fresh, create_bucket=True)
    key = make_key(1)
    assert store(adapter, [key], [tensor_payload(seed=1)]) == [True]
    assert s3.client().head_object(Bucket=fresh, Key=adapter.object_name(key))["ContentLength"] > 0


# --------------------------------------------------------------------------- credentials


def test_credentials_never_appear_in_status_repr_or_logs(
    s3: MotoServer, make_adapter: Callable[..., S3L2Adapter], caplog: pytest.LogCaptureFixture
) -> None:
    secrets = ["AKIAEXAMPLESECRETID9", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "session-token-value-42"]
    caplog.set_level(logging.DEBUG, logger="lmcache_adapters")
    caplog.set_level(logging.INFO)
    adapter = make_adapter(
        aws_access_key_id=secrets[0], aws_secret_access_key=secrets[1], aws_session_token=secrets[2]
    )
    payload = tensor_payload(seed=1)
    assert store(adapter, [make_key(1)], [payload]) == [True]
    # errors get logged and reported: make some
    broken = make_adapter(
        bucket="no-such-bucket-here",
        aws_access_key_id=secrets[0],
        aws_secret_access_key=secrets[1],
        aws_session_token=secrets[2],
        create_bucket=False,
    )
    assert store(broken, [make_key(2)], [payload]) == [False]
    assert caplog.records, "the failed PUT should have been logged"
    texts = [json.dumps(adapter.report_status()), json.dumps(broken.report_status()), repr(adapter)]
    texts += [record.getMessage() for record in caplog.records]
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --------------------------------------------------------------------------- config


@pytest.fixture
def registry() -> L2AdapterRegistry:
    reg = L2AdapterRegistry()
    reg.register("s3", create_s3_adapter, fields=S3_FIELDS)
    return reg


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"type": "s3"}, "bucket"),
        ({"type": "s3", "bucket": "b", "connect_timeout": "fast"}, "connect_timeout"),
        ({"type": "s3", "bucket": "b", "bukket": "typo"}, "bukket"),
        ({"type": "s3", "bucket": "b", "max_workers": 0}, "max_workers"),
        ({"type": "s3", "bucket": "b", "read_timeout": -1}, "read_timeout"),
        ({"type": "s3", "bucket": "b", "circuit_breaker_threshold": 0}, "circuit_breaker_threshold"),
        ({"type": "s3", "bucket": "b", "capacity_bytes": 0}, "capacity_bytes"),
        ({"type": "s3", "bucket": "b", "endpoint_url": "ftp://x"}, "endpoint_url"),
        ({"type": "s3", "bucket": "b", "addressing_style": "sideways"}, "addressing_style"),
        ({"type": "s3", "bucket": " "}, "bucket"),
        ({"type": "s3", "bucket": "b", "aws_access_key_id": "only-the-id"}, "aws_secret_access_key"),
    ],
)
def test_config_errors_name_the_field(registry: L2AdapterRegistry, raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        spec, config = registry.parse(json.dumps(raw))
        spec.factory(config, None)


def test_factory_builds_a_working_adapter_from_json(s3: MotoServer, bucket: str, registry: L2AdapterRegistry) -> None:
    raw = json.dumps({"type": "s3", "bucket": bucket, "endpoint_url": s3.url, "prefix": "p/", "max_workers": 2,
                      "connect_timeout": 1, "read_timeout": 2.5, "name": "shared"})
    spec, config = registry.parse(raw)
    clock = ManualClock()
    adapter = spec.factory(config, {"clock": clock})
    try:
        assert adapter.kind == "s3"
        assert store(adapter, [make_key(1)], [tensor_payload(seed=1)]) == [True]  # type: ignore[arg-type]
        status = adapter.report_status()
        assert status["bucket"] == bucket and status["prefix"] == "p/" and status["endpoint_url"] == s3.url
    finally:
        adapter.close()


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` raise ImportError
    with pytest.raises(ConfigError, match=r"lmcache-server\[s3\]"):
        create_s3_adapter({"bucket": "b"}, None)
