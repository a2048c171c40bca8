"""The dax L2 adapter: runtime reconfiguration (add / remove / resize), persistence and failure handling."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmcache_adapters.l2.dax import (
    RECORD_BYTES,
    SLOT_OVERHEAD,
    SUPERBLOCK_BYTES,
    DaxL2Adapter,
    InvalidSizeError,
    UnsupportedOperationError,
    create_dax_adapter,
    dax_geometry,
    parse_size,
    slot_io,
)
from lmcache_adapters.memory import devices as devices_module
from lmcache_core.errors import ConfigError, ConflictError, ForbiddenOperationError, NotFoundError
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.testing import poll_until

SLOT = 8192
TIMEOUT = 10.0


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(chunk_hash=i.to_bytes(8, "big") * 4, model_name="org/model", kv_rank=kv_rank_for(1, 0), cache_salt=salt)


def payload(seed: int, n: int = 3000) -> bytes:
    return random.Random(seed).randbytes(n)


def dev_size(slots: int) -> int:
    return SUPERBLOCK_BYTES + slots * SLOT


def store(adapter: DaxL2Adapter, items: dict[ObjectKey, bytes]) -> list[bool]:
    keys = list(items)
    return adapter.submit_store(keys, [memoryview(items[k]) for k in keys]).result(timeout=TIMEOUT)


def load(adapter: DaxL2Adapter, k: ObjectKey, n: int) -> bytes | None:
    buf = bytearray(n)
    ok = adapter.submit_load([k], [memoryview(buf)]).result(timeout=TIMEOUT)
    return bytes(buf) if ok == [True] else None


def lookup(adapter: DaxL2Adapter, keys: list[ObjectKey], *, keep_lock: bool = False) -> list[bool]:
    hits = adapter.submit_lookup_and_lock(keys).result(timeout=TIMEOUT)
    if not keep_lock:
        adapter.unlock([k for k, h in zip(keys, hits, strict=True) if h])
    return hits


def device(adapter: DaxL2Adapter, path: Path) -> dict[str, Any]:
    return next(d for d in adapter.report_status()["devices"] if d["path"] == str(path))


def keys_on(adapter: DaxL2Adapter, path: Path) -> list[ObjectKey]:
    return [k for k, loc in adapter.backend.slots.locations.items() if loc.device.path == str(path)]


@pytest.fixture
def paths(tmp_path: Path) -> list[Path]:
    return [tmp_path / "dax0", tmp_path / "dax1", tmp_path / "dax2"]


@pytest.fixture
def adapter(paths: list[Path]) -> Iterator[DaxL2Adapter]:
    a = DaxL2Adapter([{"path": str(paths[0]), "size": dev_size(8)}, {"path": str(paths[1]), "size": dev_size(8)}], SLOT)
    yield a
    a.close()


def fill(adapter: DaxL2Adapter, n: int, start: int = 0) -> dict[ObjectKey, bytes]:
    items = {key(i): payload(i, 1000 + 97 * (i % 60)) for i in range(start, start + n)}
    assert store(adapter, items) == [True] * n
    return items


def assert_served(adapter: DaxL2Adapter, items: dict[ObjectKey, bytes]) -> None:
    for k, data in items.items():
        assert load(adapter, k, len(data)) == data, f"{k} not served byte for byte"


# ---------------------------------------------------------------------- sizes and configuration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100GiB", 100 * 1024**3),
        ("512MiB", 512 * 1024**2),
        ("1G", 1024**3),
        ("4096", 4096),
        (4096, 4096),
        ("1.5KiB", 1536),
        (" 2 mb ", 2 * 1024**2),
        ("3t", 3 * 1024**4),
        ("7b", 7),
    ],
)
def test_parse_size_accepts_bytes_and_base_1024_units(text: Any, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", [0, -5, True, 1.5, None, "", "abc", "10XB", "1e9", "-1GiB", "0MiB", "1 2 GiB"])
def test_parse_size_rejects_bad_values_naming_the_field(bad: Any) -> None:
    with pytest.raises(InvalidSizeError, match="new_size"):
        parse_size(bad, "new_size")
    assert issubclass(InvalidSizeError, ConfigError)


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    f = str(tmp_path / "d")
    with pytest.raises(ConfigError, match="devices"):
        DaxL2Adapter([], SLOT)
    with pytest.raises(ConfigError, match="slot_bytes"):
        DaxL2Adapter([{"path": f, "size": "1MiB"}], 1024)
    with pytest.raises(ConfigError, match=r"devices\[0\].size"):
        DaxL2Adapter([{"path": f, "size": "lots"}], SLOT)
    with pytest.raises(ConfigError, match="size is required"):
        DaxL2Adapter([{"path": f}], SLOT)
    with pytest.raises(ConfigError, match="does not fit one slot"):
        DaxL2Adapter([{"path": f, "size": SLOT}], SLOT)
    with pytest.raises(ConfigError, match="unknown field"):
        DaxL2Adapter([{"path": f, "size": "1MiB", "speed": 3}], SLOT)
    with pytest.raises(ConfigError, match="configured twice"):
        DaxL2Adapter([{"path": f, "size": "1MiB"}, {"path": f, "size": "1MiB"}], SLOT)
    with pytest.raises(ConfigError, match="does not exist"):
        DaxL2Adapter([{"path": str(tmp_path / "no" / "dir"), "size": "1MiB"}], SLOT)


def test_factory_validates_fields_and_accepts_size_strings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="colour"):
        create_dax_adapter({"devices": [], "slot_bytes": SLOT, "colour": "red"}, None)
    with pytest.raises(ConfigError, match="'slot_bytes'"):
        create_dax_adapter({"devices": [{"path": str(tmp_path / "a"), "size": "1MiB"}]}, None)
    a = create_dax_adapter(
        {"devices": [{"path": str(tmp_path / "a"), "size": "1MiB"}], "slot_bytes": "8KiB", "placement": "round_robin"},
        None,
    )
    try:
        report = a.report_status()
        assert report["slot_bytes"] == 8192 and report["placement"] == "round_robin"
        assert report["capacity_bytes"] == (1024**2 - SUPERBLOCK_BYTES) // 8192 * 8192
    finally:
        a.close()


def test_refuses_to_overwrite_a_foreign_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("important data that is not a dax device")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        DaxL2Adapter([{"path": str(f), "size": "1MiB"}], SLOT)
    assert f.read_text() == "important data that is not a dax device"


def test_device_dax_geometry_comes_from_sysfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sysfs = tmp_path / "sys"
    (sysfs / "dax3.1").mkdir(parents=True)
    (sysfs / "dax3.1" / "size").write_text("68719476736\n")
    (sysfs / "dax3.1" / "align").write_text("1073741824\n")
    (sysfs / "dax4.0").mkdir()
    (sysfs / "dax4.0" / "size").write_text("4294967296\n")  # an older kernel: no align attribute
    monkeypatch.setattr(devices_module, "SYSFS_DAX_ROOT", str(sysfs))
    assert dax_geometry("/dev/dax3.1") == (64 * 1024**3, 1024**3)
    assert dax_geometry("/dev/dax4.0") == (4 * 1024**3, 2 * 1024**2)
    with pytest.raises(ConfigError, match="unreadable"):
        dax_geometry("/dev/dax9.9")


# ---------------------------------------------------------------------- data path specifics


def test_objects_larger_than_a_slot_fail_for_that_key_only(adapter: DaxL2Adapter) -> None:
    fits, too_big = payload(1, SLOT - SLOT_OVERHEAD), payload(2, SLOT - SLOT_OVERHEAD + 1)
    assert store(adapter, {key(1): fits, key(2): too_big}) == [True, False]
    assert load(adapter, key(1), len(fits)) == fits
    assert lookup(adapter, [key(2)]) == [False]


def test_a_full_adapter_refuses_stores_until_space_is_freed(adapter: DaxL2Adapter) -> None:
    items = fill(adapter, 16)
    assert store(adapter, {key(99): payload(99)}) == [False]
    assert adapter.report_status()["used_bytes"] == adapter.report_status()["capacity_bytes"]
    assert adapter.delete([key(0)]) == [True]
    assert store(adapter, {key(99): payload(99)}) == [True]
    del items[key(0)]
    assert_served(adapter, items)


@pytest.mark.parametrize("placement", ["most_free", "round_robin"])
def test_placement_spreads_objects_over_devices(paths: list[Path], placement: str) -> None:
    a = DaxL2Adapter(
        [{"path": str(p), "size": dev_size(8)} for p in paths[:2]], SLOT, placement=placement
    )
    try:
        fill(a, 6)
        assert len(keys_on(a, paths[0])) == len(keys_on(a, paths[1])) == 3
    finally:
        a.close()


def test_usage_counts_whole_slots_per_salt(adapter: DaxL2Adapter) -> None:
    store(adapter, {key(1, "a"): payload(1, 10), key(2, "b"): payload(2, 5000), key(3, "b"): payload(3, 7)})
    usage = adapter.usage()
    assert usage.used_bytes == 3 * SLOT
    assert dict(usage.bytes_by_salt) == {"a": SLOT, "b": 2 * SLOT}
    assert usage.capacity_bytes == 16 * SLOT


# ---------------------------------------------------------------------- add


def test_add_device_grows_capacity_and_takes_new_objects(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 16)
    result = adapter.apply_reconfiguration("add", {"device_path": str(paths[2]), "size": dev_size(4)})
    assert result["status"] == "ok" and result["operation"] == "add"
    assert result["device"]["device_path"] == str(paths[2]) and result["device"]["state"] == "active"
    assert result["device"]["slots_total"] == 4 and result["recovered_keys"] == 0
    assert adapter.usage().capacity_bytes == 20 * SLOT
    more = fill(adapter, 4, start=100)
    assert len(keys_on(adapter, paths[2])) == 4
    assert_served(adapter, {**items, **more})
    assert device(adapter, paths[2])["state"] == "active"


def test_add_accepts_size_strings_and_the_path_alias(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    result = adapter.apply_reconfiguration(" ADD ", {"path": str(paths[2]), "size": "64KiB", "adapter_index": 0})
    assert result["device"]["size_bytes"] == 64 * 1024
    assert os.path.getsize(paths[2]) == 64 * 1024


def test_adding_a_configured_device_is_a_conflict(adapter: DaxL2Adapter, paths: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ConflictError, match="already configured"):
        adapter.apply_reconfiguration("add", {"device_path": str(paths[0]), "size": dev_size(8)})
    link = tmp_path / "alias-of-dax1"
    link.symlink_to(paths[1])
    with pytest.raises(ConflictError, match="same device"):
        adapter.apply_reconfiguration("add", {"device_path": str(link), "size": dev_size(8)})
    assert len(adapter.report_status()["devices"]) == 2


@pytest.mark.parametrize(
    ("body", "error", "match"),
    [
        ({"device_path": "X", "size": "1MiB", "colour": "red"}, ConfigError, "colour"),
        ({"device_path": "X"}, ConfigError, "size"),
        ({"size": "1MiB"}, ConfigError, "device_path"),
        ({"device_path": "X", "path": "X", "size": "1MiB"}, ConfigError, "not both"),
        ({"device_path": "X", "size": "12 parsecs"}, InvalidSizeError, "size"),
        ({"device_path": "X", "size": 0}, InvalidSizeError, "size"),
        ({"device_path": "X", "size": 100}, InvalidSizeError, "one slot"),
        ({"device_path": "X", "size": "1MiB", "adapter_index": "zero"}, ConfigError, "adapter_index"),
    ],
)
def test_bad_add_bodies_are_rejected(adapter: DaxL2Adapter, paths: list[Path], body: dict[str, Any], error: type, match: str) -> None:
    body = {k: (str(paths[2]) if v == "X" else v) for k, v in body.items()}
    with pytest.raises(error, match=match):
        adapter.apply_reconfiguration("add", body)
    assert len(adapter.report_status()["devices"]) == 2


# ---------------------------------------------------------------------- remove


def test_remove_migrate_moves_every_object_byte_for_byte(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 8)
    on_dev0 = keys_on(adapter, paths[0])
    assert on_dev0, "placement put nothing on the device under test"
    result = adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "migrate"})
    assert result["operation"] == "remove" and result["state"] == "removed"
    assert result["moved_keys"] == len(on_dev0) and result["deleted_keys"] == 0
    assert result["moved_bytes"] == sum(len(items[k]) for k in on_dev0)
    assert keys_on(adapter, paths[0]) == []
    assert_served(adapter, items)
    assert device(adapter, paths[0])["state"] == "removed"
    assert adapter.usage().capacity_bytes == 8 * SLOT
    assert adapter.report_status()["stored_object_count"] == 8
    # the removed device's directory is cleared: adding it back adopts nothing stale
    again = adapter.apply_reconfiguration("add", {"device_path": str(paths[0]), "size": dev_size(8)})
    assert again["recovered_keys"] == 0
    assert_served(adapter, items)


def test_remove_migrate_without_room_is_refused_then_forced(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 16)  # both devices full: nowhere to migrate to
    with pytest.raises(ConflictError, match="no free slot"):
        adapter.apply_reconfiguration("remove", {"device_path": str(paths[0])})
    assert device(adapter, paths[0])["state"] == "active"
    assert_served(adapter, items)
    result = adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "migrate", "force": True})
    assert result["state"] == "removed" and result["moved_keys"] == 0 and result["deleted_keys"] == 8
    survivors = {k: v for k, v in items.items() if k in adapter.backend.slots.locations}
    assert len(survivors) == 8
    assert_served(adapter, survivors)


def test_remove_evict_drops_only_that_devices_objects(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 8)
    doomed = keys_on(adapter, paths[0])
    result = adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "evict"})
    assert result["deleted_keys"] == len(doomed) and result["moved_keys"] == 0
    assert lookup(adapter, doomed) == [False] * len(doomed)
    assert_served(adapter, {k: v for k, v in items.items() if k not in doomed})
    assert adapter.usage().used_bytes == (8 - len(doomed)) * SLOT


def test_locked_objects_block_removal_unless_forced(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    fill(adapter, 4)
    victim = keys_on(adapter, paths[0])[0]
    assert lookup(adapter, [victim], keep_lock=True) == [True]
    for mode in ("migrate", "evict"):
        with pytest.raises(ConflictError, match="locked"):
            adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": mode})
        assert device(adapter, paths[0])["state"] == "active"
    assert device(adapter, paths[0])["locked_key_count"] == 1
    result = adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "evict", "force": True})
    assert result["state"] == "removed"
    assert lookup(adapter, [victim]) == [False]
    assert adapter.report_status()["locked_key_count"] == 0


def test_forced_migrate_keeps_a_locked_object_locked_and_served(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 4)
    victim = keys_on(adapter, paths[0])[0]
    lookup(adapter, [victim], keep_lock=True)
    adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "migrate", "force": True})
    assert load(adapter, victim, len(items[victim])) == items[victim]
    assert adapter.delete([victim]) == [False], "the lock moved with the object"
    adapter.unlock([victim])
    assert adapter.delete([victim]) == [True]


def test_drain_stops_writes_and_removes_the_device_once_empty(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 6)
    on_dev0 = keys_on(adapter, paths[0])
    result = adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "drain"})
    assert result["operation"] == "drain" and result["state"] == "draining"
    assert result["remaining_keys"] == len(on_dev0)
    report = adapter.report_status()
    assert device(adapter, paths[0])["state"] == "draining"
    assert report["is_healthy"] is True
    fill(adapter, 3, start=50)
    assert keys_on(adapter, paths[0]) == on_dev0, "a draining device took new writes"
    assert_served(adapter, items)  # still readable while draining
    assert adapter.delete(on_dev0[:-1]) == [True] * (len(on_dev0) - 1)
    assert device(adapter, paths[0])["state"] == "draining"
    assert adapter.delete(on_dev0[-1:]) == [True]
    assert device(adapter, paths[0])["state"] == "removed"


def test_drain_then_force_removes_at_once(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    fill(adapter, 6)
    on_dev0 = keys_on(adapter, paths[0])
    adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "drain"})
    again = adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "drain"})
    assert again["state"] == "draining"
    result = adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "drain", "force": True})
    assert result["state"] == "removed" and result["deleted_keys"] == len(on_dev0)
    assert lookup(adapter, on_dev0) == [False] * len(on_dev0)


def test_overwriting_a_key_on_a_draining_device_moves_it(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    fill(adapter, 2)
    k = keys_on(adapter, paths[0])[0]
    adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "drain"})
    store(adapter, {k: payload(1234)})
    assert load(adapter, k, 3000) == payload(1234)
    assert device(adapter, paths[0])["state"] == "removed", "the drained device emptied when its last key moved"


def test_removing_an_unknown_device_is_not_found(adapter: DaxL2Adapter, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not configured"):
        adapter.apply_reconfiguration("remove", {"device_path": str(tmp_path / "nope")})
    with pytest.raises(NotFoundError):
        adapter.apply_reconfiguration("resize", {"device_path": str(tmp_path / "nope"), "size": "1MiB"})


def test_removing_the_last_active_device_is_forbidden(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 4)
    adapter.apply_reconfiguration("remove", {"device_path": str(paths[0])})
    for mode in ("migrate", "evict", "drain"):
        with pytest.raises(ForbiddenOperationError, match="last active device"):
            adapter.apply_reconfiguration("remove", {"device_path": str(paths[1]), "mode": mode, "force": True})
    assert device(adapter, paths[1])["state"] == "active"
    assert_served(adapter, items)
    with pytest.raises(NotFoundError):  # a removed device is gone for good
        adapter.apply_reconfiguration("remove", {"device_path": str(paths[0])})


@pytest.mark.parametrize(
    "body",
    [
        {"device_path": "X", "mode": "shred"},
        {"device_path": "X", "force": "yes"},
        {"device_path": "X", "size": "1MiB"},
        {"device_path": "X", "reason": "maintenance"},
    ],
)
def test_bad_remove_bodies_are_rejected(adapter: DaxL2Adapter, paths: list[Path], body: dict[str, Any]) -> None:
    body = {k: (str(paths[0]) if v == "X" else v) for k, v in body.items()}
    with pytest.raises(ConfigError):
        adapter.apply_reconfiguration("remove", body)
    assert device(adapter, paths[0])["state"] == "active"


def test_unknown_operations_and_non_object_bodies_are_rejected(adapter: DaxL2Adapter) -> None:
    with pytest.raises(UnsupportedOperationError, match="defrag"):
        adapter.apply_reconfiguration("defrag", {})
    with pytest.raises(UnsupportedOperationError):
        adapter.apply_reconfiguration("  ", {})
    with pytest.raises(ConfigError, match="JSON object"):
        adapter.apply_reconfiguration("add", ["not", "an", "object"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="verbose"):
        adapter.apply_reconfiguration("status", {"verbose": True})


# ---------------------------------------------------------------------- resize


def test_resize_grow_adds_free_slots(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 16)
    result = adapter.apply_reconfiguration("resize", {"device_path": str(paths[0]), "size": dev_size(12)})
    assert result["old_size_bytes"] == dev_size(8) and result["new_size_bytes"] == dev_size(12)
    assert result["slots_total"] == 12 and result["state"] == "active"
    assert os.path.getsize(paths[0]) == dev_size(12)
    more = fill(adapter, 4, start=200)
    assert_served(adapter, {**items, **more})
    assert adapter.usage().capacity_bytes == 20 * SLOT


def test_resize_shrink_with_a_free_tail(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 4)  # low slots first: the tail stays free
    result = adapter.apply_reconfiguration("resize", {"device_path": str(paths[0]), "size": dev_size(4), "mode": "evict"})
    assert result["slots_total"] == 4 and result["deleted_keys"] == 0 and result["moved_keys"] == 0
    assert os.path.getsize(paths[0]) == dev_size(4)
    assert_served(adapter, items)
    assert device(adapter, paths[0])["slots_total"] == 4


def test_resize_shrink_over_objects_is_refused_then_forced(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 16)
    body = {"device_path": str(paths[0]), "size": dev_size(5), "mode": "evict"}
    with pytest.raises(ConflictError, match="would drop 3 object"):
        adapter.apply_reconfiguration("resize", body)
    assert device(adapter, paths[0])["slots_total"] == 8 and device(adapter, paths[0])["state"] == "active"
    assert_served(adapter, items)
    # migrate cannot help either: every slot everywhere is taken
    with pytest.raises(ConflictError, match="no free slot"):
        adapter.apply_reconfiguration("resize", {**body, "mode": "migrate"})
    assert_served(adapter, items)
    result = adapter.apply_reconfiguration("resize", {**body, "force": True})
    assert result["deleted_keys"] == 3 and result["slots_total"] == 5
    survivors = {k: v for k, v in items.items() if k in adapter.backend.slots.locations}
    assert len(survivors) == 13
    assert_served(adapter, survivors)
    assert adapter.usage().used_bytes == 13 * SLOT


def test_a_refused_shrink_keeps_every_free_slot(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    fill(adapter, 16)
    doomed = keys_on(adapter, paths[0])
    adapter.delete(doomed[:5])  # dax0: slots 0..4 free, 5..7 hold objects
    lookup(adapter, doomed[5:6], keep_lock=True)
    body = {"device_path": str(paths[0]), "size": dev_size(2), "mode": "migrate"}
    with pytest.raises(ConflictError, match="locked"):
        adapter.apply_reconfiguration("resize", body)
    assert adapter.reconfigure_status()["status"]["devices"][0]["slots_free"] == 5
    assert fill(adapter, 5, start=300), "the free slots were lost by the refused shrink"
    assert store(adapter, {key(999): payload(999)}) == [False]


def test_resize_shrink_migrate_relocates_the_tail(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    items = fill(adapter, 12)
    dev0 = keys_on(adapter, paths[0])
    assert adapter.delete(dev0[:3]) == [True] * 3  # free low slots: the tail objects fit below the new end
    for k in dev0[:3]:
        del items[k]
    result = adapter.apply_reconfiguration("resize", {"device_path": str(paths[0]), "size": dev_size(4)})
    assert result["moved_keys"] >= 1 and result["deleted_keys"] == 0
    assert_served(adapter, items)
    assert all(adapter.backend.slots.locations[k].slot < 4 for k in keys_on(adapter, paths[0]))


def test_resize_refuses_bad_sizes_and_extra_fields(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    with pytest.raises(InvalidSizeError, match="size"):
        adapter.apply_reconfiguration("resize", {"device_path": str(paths[0]), "size": "huge"})
    with pytest.raises(ConfigError, match="size"):
        adapter.apply_reconfiguration("resize", {"device_path": str(paths[0])})
    with pytest.raises(ConfigError, match="mode"):
        adapter.apply_reconfiguration("resize", {"device_path": str(paths[0]), "size": "1MiB", "mode": "drain"})
    with pytest.raises(ConfigError, match="grow"):
        adapter.apply_reconfiguration("resize", {"device_path": str(paths[0]), "size": "1MiB", "grow": True})


# ---------------------------------------------------------------------- states and concurrency


@pytest.fixture
def gated_copy(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Make the first copy on a reconfiguration thread wait until the test lets it go."""
    entered, release = threading.Event(), threading.Event()
    real_copy = slot_io.copy

    def copy(dst: memoryview, src: memoryview) -> None:
        if threading.current_thread().name == "reconfigure" and not entered.is_set():
            entered.set()
            assert release.wait(TIMEOUT), "test never released the copy"
        real_copy(dst, src)

    monkeypatch.setattr(slot_io, "copy", copy)
    yield entered, release
    release.set()


def run_in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # surfaced by the test
            out.append(exc)

    t = threading.Thread(target=target, name="reconfigure", daemon=True)
    t.start()
    return t, out


def test_states_during_a_migration_are_visible_and_reads_continue(
    adapter: DaxL2Adapter, paths: list[Path], gated_copy: tuple[threading.Event, threading.Event]
) -> None:
    entered, release = gated_copy
    items = fill(adapter, 6)
    t, out = run_in_thread(lambda: adapter.apply_reconfiguration("remove", {"device_path": str(paths[0])}))
    assert entered.wait(TIMEOUT)
    assert device(adapter, paths[0])["state"] == "migrating"
    assert adapter.reconfigure_status()["status"]["devices"][0]["state"] == "migrating"
    with pytest.raises(ConflictError, match="busy"):
        adapter.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "evict"})
    assert lookup(adapter, list(items)) == [True] * 6
    other = next(k for k in items if k not in keys_on(adapter, paths[0]))
    assert load(adapter, other, len(items[other])) == items[other]
    release.set()
    t.join(TIMEOUT)
    assert not t.is_alive() and out and out[0]["state"] == "removed", out
    assert device(adapter, paths[0])["state"] == "removed"
    assert_served(adapter, items)


def test_state_during_a_resize_is_visible(
    adapter: DaxL2Adapter, paths: list[Path], gated_copy: tuple[threading.Event, threading.Event]
) -> None:
    entered, release = gated_copy
    items = fill(adapter, 12)
    adapter.delete(keys_on(adapter, paths[0])[:3])
    t, out = run_in_thread(
        lambda: adapter.apply_reconfiguration("resize", {"device_path": str(paths[0]), "size": dev_size(4)})
    )
    assert entered.wait(TIMEOUT)
    assert device(adapter, paths[0])["state"] == "resizing"
    release.set()
    t.join(TIMEOUT)
    assert not t.is_alive() and out[0]["state"] == "active", out
    assert device(adapter, paths[0])["state"] == "active"
    assert_served(adapter, {k: v for k, v in items.items() if k in adapter.backend.slots.locations})


def test_concurrent_stores_during_a_migration_never_lose_an_acknowledged_object(paths: list[Path]) -> None:
    a = DaxL2Adapter([{"path": str(p), "size": dev_size(128)} for p in paths[:2]], SLOT, max_workers=4)  # 100 objects fit on one
    try:
        fill(a, 20)
        acknowledged: dict[ObjectKey, bytes] = {}
        stop = threading.Event()
        started = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for i in range(1000, 1080):  # bounded: 80 objects, 10 per batch
                    if stop.is_set() and i % 10 == 0:
                        return
                    if i % 10 == 0:
                        batch = {key(j): payload(j, 2000) for j in range(i, i + 10)}
                        oks = store(a, batch)
                        acknowledged.update({k: v for (k, v), ok in zip(batch.items(), oks, strict=True) if ok})
                        started.set()
            except BaseException as exc:
                errors.append(exc)

        w = threading.Thread(target=writer, daemon=True)
        w.start()
        assert started.wait(TIMEOUT)
        result = a.apply_reconfiguration("remove", {"device_path": str(paths[0]), "mode": "migrate"})
        stop.set()
        w.join(TIMEOUT)
        assert not w.is_alive() and not errors, errors
        assert result["state"] == "removed"
        assert acknowledged, "the writer stored nothing"
        assert keys_on(a, paths[0]) == []
        assert_served(a, acknowledged)
    finally:
        a.close()


def test_a_store_in_flight_into_the_device_when_a_migration_starts_is_migrated(
    adapter: DaxL2Adapter, paths: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    real_copy = slot_io.copy
    dev0 = adapter.backend.slots.devices[0]

    def copy(dst: memoryview, src: memoryview) -> None:
        if dst.obj is dev0.mm and threading.current_thread().name.startswith("lmcache-l2-") and not entered.is_set():
            entered.set()  # a store is half-way into dax0
            assert release.wait(TIMEOUT)
        real_copy(dst, src)

    monkeypatch.setattr(slot_io, "copy", copy)
    data = payload(42, 5000)
    future = adapter.submit_store([key(42)], [memoryview(data)])  # empty devices: most_free picks dax0
    assert entered.wait(TIMEOUT)
    t, out = run_in_thread(lambda: adapter.apply_reconfiguration("remove", {"device_path": str(paths[0])}))
    poll_until(lambda: device(adapter, paths[0])["state"] == "migrating", timeout=TIMEOUT, interval=0.001,
               what="dax0 to start migrating")
    release.set()
    assert future.result(timeout=TIMEOUT) == [True]
    t.join(TIMEOUT)
    assert not t.is_alive() and out[0]["state"] == "removed", out
    assert out[0]["moved_keys"] == 1
    assert load(adapter, key(42), len(data)) == data, "an acknowledged store was lost by the migration"


def test_a_failing_device_is_marked_failed_and_can_be_removed(
    adapter: DaxL2Adapter, paths: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    items = fill(adapter, 4)
    real_copy = slot_io.copy
    bad = adapter.backend.slots.devices[0]

    def copy(dst: memoryview, src: memoryview) -> None:
        if dst.obj is bad.mm:
            raise OSError(5, "Input/output error")
        real_copy(dst, src)

    monkeypatch.setattr(slot_io, "copy", copy)
    lost = keys_on(adapter, paths[0])
    store(adapter, {key(500): payload(500), key(501): payload(501), key(502): payload(502)})
    report = adapter.report_status()
    assert report["is_healthy"] is False and "dax0" in report["error"]
    assert device(adapter, paths[0])["state"] == "failed"
    assert lookup(adapter, lost) == [False] * len(lost)
    assert store(adapter, {key(600): payload(600)}) == [True], "the healthy device keeps taking writes"
    assert_served(adapter, {k: v for k, v in items.items() if k not in lost})
    result = adapter.apply_reconfiguration("remove", {"device_path": str(paths[0])})
    assert result["state"] == "removed" and result["mode"] == "evict"
    assert adapter.report_status()["is_healthy"] is True


# ---------------------------------------------------------------------- persistence


def reopen(paths: list[Path], n: int = 2, **kw: Any) -> DaxL2Adapter:
    return DaxL2Adapter([{"path": str(p), "size": dev_size(8)} for p in paths[:n]], SLOT, **kw)


def test_a_restarted_adapter_serves_what_was_stored(paths: list[Path]) -> None:
    a = reopen(paths)
    items = fill(a, 10)
    store(a, {key(3): payload(333, 1234)})  # an overwrite: only the latest copy may come back
    items[key(3)] = payload(333, 1234)
    a.delete([key(4)])
    del items[key(4)]
    usage = a.usage()
    a.close()
    b = reopen(paths)
    try:
        assert set(b.list_keys(100).keys) == set(items)
        assert b.usage() == usage
        assert_served(b, items)
        store(b, {key(77): payload(77)})  # new writes never clobber recovered objects
        assert_served(b, items)
    finally:
        b.close()


def test_after_restart_a_corrupt_payload_is_a_miss_and_freed(paths: list[Path]) -> None:
    a = reopen(paths)
    items = fill(a, 4)
    loc = a.backend.slots.locations[key(1)]
    offset = loc.device.slot_offset(loc.slot) + SLOT_OVERHEAD + 100
    target = loc.device.path
    a.close()
    with open(target, "r+b") as f:
        f.seek(offset)
        b0 = f.read(1)
        f.seek(offset)
        f.write(bytes([b0[0] ^ 0xFF]))
    b = reopen(paths)
    try:
        assert lookup(b, [key(1)]) == [True]  # the directory entry is intact; the payload is not
        assert load(b, key(1), len(items[key(1)])) is None
        assert b.report_status()["checksum_failures"] == 1
        assert lookup(b, [key(1)]) == [False]
        del items[key(1)]
        assert_served(b, items)
    finally:
        b.close()


def test_after_restart_a_torn_directory_entry_is_a_free_slot(paths: list[Path]) -> None:
    a = reopen(paths)
    items = fill(a, 4)
    loc = a.backend.slots.locations[key(2)]
    base, target = loc.device.slot_offset(loc.slot), loc.device.path
    a.close()
    with open(target, "r+b") as f:
        f.seek(base + RECORD_BYTES - 1 - 400)  # inside the record's key name
        f.write(b"\xff")
        f.seek(base + 40)
        f.write(b"#")
    b = reopen(paths)
    try:
        assert lookup(b, [key(2)]) == [False]
        assert b.report_status()["stored_object_count"] == 3
        del items[key(2)]
        assert_served(b, items)
    finally:
        b.close()


def test_a_restart_with_another_slot_size_is_refused(paths: list[Path]) -> None:
    reopen(paths).close()
    with pytest.raises(ConfigError, match="slot_bytes=8192"):
        DaxL2Adapter([{"path": str(paths[0]), "size": "1MiB"}], 16384)


def test_added_device_with_objects_is_adopted(paths: list[Path]) -> None:
    a = DaxL2Adapter([{"path": str(paths[2]), "size": dev_size(8)}], SLOT)
    items = fill(a, 3)
    a.close()
    b = reopen(paths)
    try:
        result = b.apply_reconfiguration("add", {"device_path": str(paths[2]), "size": dev_size(8)})
        assert result["recovered_keys"] == 3
        assert_served(b, items)
    finally:
        b.close()


def test_reconfigure_status_lists_devices_for_the_http_layer(adapter: DaxL2Adapter, paths: list[Path]) -> None:
    fill(adapter, 2)
    status = adapter.apply_reconfiguration("status", {})
    assert status["backend"] == "dax"
    assert status["supported_operations"] == ["status", "add", "remove", "resize"]
    inner = status["status"]
    assert inner["slot_bytes"] == SLOT and inner["num_devices"] == 2
    assert inner["total_capacity_bytes"] == 16 * SLOT and inner["total_used_bytes"] == 2 * SLOT
    assert [d["device_path"] for d in inner["devices"]] == [str(paths[0]), str(paths[1])]
    assert {d["state"] for d in inner["devices"]} == {"active"}
    assert sum(d["slots_used"] for d in inner["devices"]) == 2
