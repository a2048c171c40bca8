"""The fs L2 adapter beyond the contract: restart, crash leftovers, foreign files, integrity, config."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from lmcache_adapters.l2.fs import FS_FIELDS, TMP_PREFIX, FSL2Adapter, create_fs_adapter, shard_dirs
from lmcache_adapters.l2.integrity import HEADER_SIZE, decode_header
from lmcache_adapters.testing import make_key, tensor_payload
from lmcache_core.errors import ConfigError
from lmcache_core.keys import ObjectKey
from lmcache_core.plugin.registry import L2AdapterRegistry

TIMEOUT = 10


def path_of(adapter: FSL2Adapter, key: ObjectKey) -> Path:
    return Path(adapter.base_path, *shard_dirs(key), key.to_storage_name())


def store(adapter: FSL2Adapter, keys: list[ObjectKey], payloads: list[memoryview]) -> list[bool]:
    return adapter.submit_store(keys, payloads).result(timeout=TIMEOUT)


def load(
    adapter: FSL2Adapter, keys: list[ObjectKey], sizes: list[int]
) -> tuple[list[bool], list[bytearray]]:
    bufs = [bytearray(n) for n in sizes]
    return adapter.submit_load(keys, [memoryview(b) for b in bufs]).result(timeout=TIMEOUT), bufs


class RecordingMetrics:
    def __init__(self) -> None:
        self.counters: dict[str, float] = {}

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        pass

    def observe(self, name: str, value: float, **labels: str) -> None:
        pass


@pytest.fixture
def base(tmp_path: Path) -> str:
    return str(tmp_path / "l2")


def _populate(adapter: FSL2Adapter) -> tuple[list[ObjectKey], list[memoryview]]:
    keys = [make_key(i, cache_salt="a" if i % 2 else "") for i in range(6)] + [
        make_key(50, model_name="org/other-model", cache_salt="b")
    ]
    payloads = [tensor_payload(256 * (i + 1), seed=i) for i in range(len(keys))]
    assert store(adapter, keys, payloads) == [True] * len(keys)
    return keys, payloads


@pytest.mark.parametrize("close_first", [True, False], ids=["closed", "never-closed"])
def test_a_restarted_adapter_serves_everything_on_disk(base: str, close_first: bool) -> None:
    first = FSL2Adapter(base)
    keys, payloads = _populate(first)
    usage_before = first.usage()
    if close_first:
        first.close()
    second = FSL2Adapter(base)
    try:
        assert second.submit_lookup_and_lock(keys).result(timeout=TIMEOUT) == [True] * len(keys)
        second.unlock(keys)
        ok, bufs = load(second, keys, [p.nbytes for p in payloads])
        assert ok == [True] * len(keys)
        assert [bytes(b) for b in bufs] == [bytes(p) for p in payloads]
        usage = second.usage()
        assert usage.used_bytes == usage_before.used_bytes
        assert dict(usage.bytes_by_salt) == dict(usage_before.bytes_by_salt)
        assert set(second.list_keys(100).keys) == set(keys)
        assert second.report_status()["stored_object_count"] == len(keys)
    finally:
        second.close()
        first.close()


def test_layout_is_sharded_header_plus_payload(base: str) -> None:
    adapter = FSL2Adapter(base)
    key = make_key(0xABCD)
    payload = tensor_payload(100, seed=1)
    store(adapter, [key], [payload])
    path = path_of(adapter, key)
    h = key.chunk_hash.hex()
    assert path.parent == Path(base, h[:2], h[2:4])
    raw = path.read_bytes()
    assert decode_header(raw[:HEADER_SIZE]).payload_length == payload.nbytes
    assert raw[HEADER_SIZE:] == bytes(payload)
    assert [p.name for p in path.parent.iterdir()] == [key.to_storage_name()]  # no temp file left
    adapter.close()


def test_leftover_temp_files_are_removed_and_never_served(base: str) -> None:
    first = FSL2Adapter(base)
    keys, _ = _populate(first)
    first.close()
    shard = path_of(first, keys[0]).parent
    torn = shard / f"{TMP_PREFIX}{'0' * 32}"
    torn.write_bytes(b"half an object")
    second = FSL2Adapter(base)
    assert not torn.exists()
    status = second.report_status()
    assert status["removed_temp_files"] == 1
    assert status["stored_object_count"] == len(keys)
    assert len(second.list_keys(100).keys) == len(keys)
    second.close()


def test_foreign_and_misplaced_files_are_skipped_and_counted(base: str) -> None:
    first = FSL2Adapter(base)
    keys, payloads = _populate(first)
    first.close()
    shard = path_of(first, keys[0]).parent
    (Path(base) / "README.txt").write_text("not an object")
    (Path(base) / "zz").mkdir()
    (shard / "not-a-storage-name").write_bytes(b"x")
    (shard / "junk").mkdir()
    misplaced = make_key(0x1234_5678)
    wrong_dir = Path(base, "ff", "ff")  # its hash starts 00 00
    wrong_dir.mkdir(parents=True, exist_ok=True)
    (wrong_dir / misplaced.to_storage_name()).write_bytes(b"y" * 64)
    second = FSL2Adapter(base)
    status = second.report_status()
    assert status["skipped_files"] == 5
    assert status["stored_object_count"] == len(keys)
    assert second.submit_lookup_and_lock([misplaced]).result(timeout=TIMEOUT) == [False]
    ok, _ = load(second, keys, [p.nbytes for p in payloads])
    assert ok == [True] * len(keys)
    second.close()


def test_capacity_counts_what_is_already_on_disk(base: str) -> None:
    first = FSL2Adapter(base)
    keys, _ = _populate(first)
    used = first.usage().used_bytes
    first.close()
    second = FSL2Adapter(base, capacity_bytes=used + 100)
    assert second.usage().capacity_bytes == used + 100
    assert store(second, [make_key(99)], [tensor_payload(256, seed=9)]) == [False]
    assert store(second, [make_key(98)], [tensor_payload(16, seed=9)]) == [
        True
    ]  # 32 + 32 bytes fit
    assert second.usage().used_bytes <= used + 100
    # an overwrite only needs room for its growth
    assert store(second, [keys[0]], [tensor_payload(256, seed=77)]) == [True]
    second.close()


def test_checksum_failure_is_a_miss_deletes_and_counts(base: str) -> None:
    metrics = RecordingMetrics()
    adapter = FSL2Adapter(base, metrics=metrics)
    key = make_key(1)
    payload = tensor_payload(512, seed=1)
    store(adapter, [key], [payload])
    path = path_of(adapter, key)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 100] ^= 0x80
    path.write_bytes(raw)
    # the prefetch path: lookup (locks), then load
    assert adapter.submit_lookup_and_lock([key]).result(timeout=TIMEOUT) == [True]
    ok, _ = load(adapter, [key], [payload.nbytes])
    assert ok == [False]
    adapter.unlock([key])
    assert not path.exists()
    status = adapter.report_status()
    assert status["checksum_failures"] == 1 and status["stored_object_count"] == 0
    assert metrics.counters == {"l2_checksum_failures": 1}
    assert adapter.usage().used_bytes == 0
    adapter.close()


@pytest.mark.parametrize("odirect", [False, True], ids=["buffered", "odirect"])
def test_a_file_truncated_on_disk_is_a_miss(base: str, odirect: bool) -> None:
    adapter = FSL2Adapter(base, use_odirect=odirect)
    keys = [make_key(1), make_key(2)]
    payloads = [tensor_payload(4096, seed=1), tensor_payload(4096, seed=2)]
    store(adapter, keys, payloads)
    adapter.close()
    os.truncate(path_of(adapter, keys[0]), HEADER_SIZE + 1000)
    os.truncate(path_of(adapter, keys[1]), 10)  # not even a header left
    restarted = FSL2Adapter(base, use_odirect=odirect)
    ok, _ = load(restarted, keys, [p.nbytes for p in payloads])
    assert ok == [False, False]
    assert restarted.report_status()["checksum_failures"] == 2
    assert restarted.submit_lookup_and_lock(keys).result(timeout=TIMEOUT) == [False, False]
    restarted.close()


def test_a_file_deleted_behind_the_adapters_back_is_a_miss(base: str) -> None:
    adapter = FSL2Adapter(base)
    key = make_key(3)
    store(adapter, [key], [tensor_payload(64, seed=3)])
    path_of(adapter, key).unlink()
    ok, _ = load(adapter, [key], [128])
    assert ok == [False]
    assert adapter.list_keys(10).keys == []
    adapter.close()


def test_unwritable_base_path_is_unhealthy_and_stores_fail(tmp_path: Path) -> None:
    base = tmp_path / "l2"
    adapter = FSL2Adapter(str(base), fsync=False)
    assert adapter.report_status()["is_healthy"] is True
    base.rename(tmp_path / "moved")
    base.write_text("a file where the directory was")
    status = adapter.report_status()
    assert status["is_healthy"] is False and status["writable"] is False
    assert store(adapter, [make_key(1)], [tensor_payload(64)]) == [False]
    assert adapter.report_status()["write_failures"] == 1
    adapter.close()


def test_odirect_falls_back_on_a_filesystem_that_refuses_it(
    base: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_open = os.open

    def refusing_open(path: str, flags: int, *args: int) -> int:
        if flags & getattr(os, "O_DIRECT", 0):  # what tmpfs on older kernels answers
            raise OSError(errno.EINVAL, "Invalid argument", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    with caplog.at_level(logging.WARNING, logger="lmcache_adapters.l2.fs"):
        adapter = FSL2Adapter(base, use_odirect=True)
    assert adapter.report_status()["odirect"] is False
    assert any("O_DIRECT" in r.getMessage() for r in caplog.records)
    payload = tensor_payload(1000, seed=5)
    assert store(adapter, [make_key(5)], [payload]) == [True]
    ok, bufs = load(adapter, [make_key(5)], [payload.nbytes])
    assert ok == [True] and bytes(bufs[0]) == bytes(payload)
    assert not list(Path(base).glob(".lmc-odirect-probe"))
    adapter.close()


def test_close_with_queued_work_completes_every_future(base: str) -> None:
    adapter = FSL2Adapter(base, max_workers=1)
    futures = [
        adapter.submit_store([make_key(i)], [tensor_payload(2048, seed=i)]) for i in range(50)
    ]
    adapter.close()
    results = [f.result(timeout=TIMEOUT)[0] for f in futures]
    assert results[0] in (True, False) and not all(
        results
    )  # queued stores were cancelled, not hung
    assert adapter.report_status()["pending_operations"] == 0


def test_stored_nbytes_reports_payload_lengths(base: str) -> None:
    adapter = FSL2Adapter(base)
    store(adapter, [make_key(1)], [tensor_payload(300)])
    assert adapter.stored_nbytes([make_key(1), make_key(2)]) == [600, None]
    adapter.close()


# ---------------------------------------------------------------------- config


def test_factory_builds_from_json_through_the_registry(tmp_path: Path) -> None:
    registry = L2AdapterRegistry()
    registry.register("fs", create_fs_adapter, fields=FS_FIELDS)
    spec, config = registry.parse(
        f'{{"type": "fs", "base_path": "{tmp_path / "x"}", "capacity_bytes": 1000000, '
        '"use_odirect": false, "max_workers": 2, "fsync": false, "name": "disk"}'
    )
    adapter = spec.factory(config, None)
    status = adapter.report_status()
    assert status["capacity_bytes"] == 1000000 and status["fsync"] is False
    adapter.close()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({}, "base_path"),
        ({"base_path": ""}, "base_path"),
        ({"base_path": 3}, "base_path"),
        ({"base_path": "X", "capacity_bytes": 0}, "capacity_bytes"),
        ({"base_path": "X", "capacity_bytes": "1G"}, "capacity_bytes"),
        ({"base_path": "X", "max_workers": 0}, "max_workers"),
        ({"base_path": "X", "use_odirect": "yes"}, "use_odirect"),
        ({"base_path": "X", "fsync": 1}, "fsync"),
        ({"base_path": "X", "bogus": 1}, "bogus"),
    ],
)
def test_factory_rejects_bad_config_naming_the_field(
    tmp_path: Path, config: dict, field: str
) -> None:
    if config.get("base_path") == "X":
        config = {**config, "base_path": str(tmp_path / "x")}
    with pytest.raises(ConfigError, match=field):
        create_fs_adapter(config, None)


def test_factory_rejects_a_base_path_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="base_path"):
        create_fs_adapter({"base_path": str(target)}, None)
