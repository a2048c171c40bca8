"""A short, bounded run of benchmarks/soak.py: checksummed clients under operator churn, kill -9
mid-write-back and an S3 outage must serve no corrupt chunk, lose no acknowledged L2 write and
crash no server."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SOAK_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def _load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lmcache_soak", SOAK_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(150)
def test_short_soak_serves_no_corrupt_chunk_loses_no_acknowledged_write_and_never_crashes() -> None:
    soak = _load_soak()
    report = soak.run(soak.SoakParams(duration_s=10.0, clients=3, families=16))
    text = soak.render(report)
    ops = report["operations"]

    assert report["corrupt_chunks_served"] == 0, text
    assert report["acknowledged_l2_writes_lost"] == 0, text
    assert report["server_crashes"] == 0, text
    assert report["pass"] is True, text
    # the run did real work in every part, so the zeros above mean something
    assert ops["lookups"] >= 200 and ops["retrieved_chunks"] >= 100 and ops["stored_chunks"] >= 100, text
    assert ops["admin_calls"] >= 20 and ops["admin_calls_by_action"].get("clear", 0) >= 1, text
    assert report["acknowledged"]["acknowledged_l2_writes"] >= 20, text
    assert report["acknowledged"]["served_after_restart"] == report["acknowledged"]["acknowledged_l2_writes"], text
    assert any(e["evicted_objects_total"] > 0 for e in report["eviction"]), text
    assert report["recovery_s"]["kill9_to_first_round_trip_s"] is not None, text
    assert report["recovery_s"]["s3_restart_to_l2_round_trip_s"] is not None, text
    assert report["client_threads_stuck"] == 0, text


@pytest.mark.parametrize("failing", ["corrupt_chunks_served", "acknowledged_l2_writes_lost", "server_crashes"])
def test_the_runner_exits_non_zero_and_writes_json_when_a_zero_fails(
    failing: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    soak = _load_soak()
    zeros = {"corrupt_chunks_served": 0, "acknowledged_l2_writes_lost": 0, "server_crashes": 0}
    report = {
        "params": {"clients": 1, "l1_size_gb": 0.03125},
        "operations": {k: 0 for k in ("lookups", "retrieved_chunks", "retrieves", "retrieve_misses",
                                      "stored_chunks", "stores", "store_failures", "admin_calls",
                                      "l2_keys_deleted_by_operator")}
        | {"admin_calls_by_action": {}, "client_errors_by_phase": {}},
        "acknowledged": {}, "recovery_s": {}, "eviction": [], "max_healthcheck_latency_s": 0.0,
        "notes": [], "wall_s": 1.0, **zeros, failing: 2, "pass": False,
    }
    monkeypatch.setattr(soak, "run", lambda params: report)
    out = tmp_path / "soak.json"
    assert soak.main(["--duration", "1", "--json", str(out)]) == 1
    assert capsys.readouterr().out.rstrip().endswith("FAIL")
    assert json.loads(out.read_text())[failing] == 2
    monkeypatch.setattr(soak, "run", lambda params: {**report, failing: 0, "pass": True})
    assert soak.main(["--duration", "1"]) == 0
