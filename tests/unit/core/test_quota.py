"""QuotaManager: validation, limits, and persistence across a restart."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from lmcache_core.errors import ConfigError, InvalidKeyError
from lmcache_core.quota import QuotaManager


def test_set_get_delete_list_and_limit_for() -> None:
    quotas = QuotaManager()
    assert quotas.get("alice") is None and quotas.limit_for("alice") == 0
    assert quotas.set("alice", 10 * 2**30) == 10 * 2**30
    assert quotas.set("", 1.9) == 1  # floats are truncated to whole bytes
    assert quotas.get("alice") == 10 * 2**30 and quotas.limit_for("") == 1
    assert quotas.list() == {"alice": 10 * 2**30, "": 1}
    assert quotas.set("alice", 0) == 0
    assert quotas.get("alice") == 0
    assert quotas.delete("alice") is True
    assert quotas.delete("alice") is False
    assert quotas.list() == {"": 1}
    assert quotas.report_status() == {
        "is_healthy": True,
        "quota_count": 1,
        "persistent": False,
        "state_path": None,
        "state_error": None,
    }


@pytest.mark.parametrize(
    ("limit", "problem"),
    [
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (-1, ">= 0"),
        ("10", "number"),
        (True, "number"),
        (None, "number"),
    ],
)
def test_rejects_bad_limits_naming_the_problem(limit: object, problem: str) -> None:
    quotas = QuotaManager()
    with pytest.raises(ConfigError, match=problem):
        quotas.set("alice", limit)  # type: ignore[arg-type]
    assert quotas.list() == {}


@pytest.mark.parametrize("salt", ["a/b", "a@b", "x" * 129, "nul\x00"])
def test_rejects_invalid_salts(salt: str) -> None:
    with pytest.raises(InvalidKeyError):
        QuotaManager().set(salt, 1)


def test_persists_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "quotas.json"
    quotas = QuotaManager(path)
    quotas.set("alice", 100)
    quotas.set("", 7)
    quotas.set("bob", 5)
    quotas.delete("bob")
    assert sorted(p.name for p in path.parent.iterdir()) == ["quotas.json"]  # no temp files left
    restarted = QuotaManager(path)
    assert restarted.list() == {"alice": 100, "": 7}
    assert restarted.report_status()["persistent"] is True
    assert json.loads(path.read_text())["quotas"] == {"": 7, "alice": 100}


def test_missing_state_file_starts_empty(tmp_path: Path) -> None:
    assert QuotaManager(tmp_path / "nope.json").list() == {}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"quotas": []}',
        '{"quotas": {"alice": -5}}',
        '{"quotas": {"a/b": 5}}',
        '{"quotas": {"x": "big"}}',
    ],
)
def test_corrupt_state_file_is_an_error_naming_it_and_is_left_alone(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "quotas.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="quotas.json"):
        QuotaManager(path)
    assert path.read_text() == content


def test_a_failed_write_leaves_memory_as_on_disk(tmp_path: Path) -> None:
    state = tmp_path / "state"
    quotas = QuotaManager(state / "quotas.json")
    state.write_text("")  # the state directory is now a file: every write fails
    with pytest.raises(OSError):
        quotas.set("alice", 5)
    assert quotas.list() == {}


def test_concurrent_updates_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "quotas.json"
    quotas = QuotaManager(path)

    def worker(n: int) -> None:
        for i in range(5):
            quotas.set(f"t{n}-{i}", i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(quotas.list()) == 20
    assert QuotaManager(path).list() == quotas.list()
