"""Readiness that tells the truth: the real server with an S3 L2 (moto's server over HTTP) and an
fs L2 whose backend is broken answers /readyz 503 with the reason, /status unhealthy, says so at
start-up, and recovers when the backend does."""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerProcess

from lmcache_core.testing import poll_until
from s3_server import MotoServer, moto_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())



def l2_report(server: ServerProcess) -> dict[str, Any]:
    (report,) = get(f"{server.url}/status")[1]["storage_manager"]["l2_adapters"]
    return report


def s3_adapter(moto: MotoServer, bucket: str) -> str:
    return json.dumps({
        "type": "s3", "bucket": bucket, "endpoint_url": moto.url, "connect_timeout": 1, "read_timeout": 2,
        "max_attempts": 1, "circuit_breaker_threshold": 2, "circuit_breaker_backoff_seconds": 1,
        "circuit_breaker_max_backoff_seconds": 2,
    })


@pytest.mark.timeout(120)
def test_a_missing_bucket_is_not_ready_from_the_start_and_recovers_once_created(
    start_server: Callable[..., ServerProcess], moto: MotoServer
) -> None:
    server = start_server("--l2-adapter", s3_adapter(moto, "no-such-bucket"))
    # Start-up says it: an error line and the ready line.
    assert "L2 adapter 0:s3 is not usable: bucket 'no-such-bucket'" in server.stderr
    assert "does not exist" in server.stderr and "(NOT READY: l2:0:s3 bucket 'no-such-bucket'" in server.stderr

    code, body = get(f"{server.url}/readyz")
    assert code == 503 and body["ready"] is False and body["failing"] == ["l2:0:s3"]
    assert "bucket 'no-such-bucket'" in body["checks"]["l2:0:s3"]["error"]
    assert "does not exist" in body["error"] or "l2:0:s3" in body["error"]
    status = get(f"{server.url}/status")[1]
    assert status["is_healthy"] is False
    report = l2_report(server)
    assert report["is_healthy"] is False and "does not exist" in report["error"]
    assert report["backend_check"]["ok"] is False
    assert get(f"{server.url}/healthcheck")[0] == 200  # alive, just not ready: no restart loop

    moto.client().create_bucket(Bucket="no-such-bucket")
    poll_until(lambda: get(f"{server.url}/readyz")[0] == 200, what="/readyz ready", timeout=30.0, interval=0.2)
    # /status agrees (the readiness probe recorded it; the l2-health thread would within 5 s).
    assert get(f"{server.url}/status")[1]["is_healthy"] is True
    server.wait_for_line(re.compile("L2 adapter 0:s3 is usable again"), 10)
    assert server.stop() == 0


@pytest.mark.timeout(150)
def test_a_dead_endpoint_is_not_ready_and_recovers_with_it(
    start_server: Callable[..., ServerProcess], moto: MotoServer
) -> None:
    moto.client().create_bucket(Bucket="kv-cache")
    server = start_server("--l2-adapter", s3_adapter(moto, "kv-cache"), "--readyz-timeout-seconds", "5")
    assert "NOT READY" not in server.stderr
    assert get(f"{server.url}/readyz")[0] == 200

    moto.stop()
    code, body = get(f"{server.url}/readyz")
    assert code == 503 and "endpoint unreachable" in body["checks"]["l2:0:s3"]["error"]
    poll_until(lambda: get(f"{server.url}/status")[1]["is_healthy"] is False, what="/status unhealthy", timeout=30.0, interval=0.2)

    moto.restart()
    moto.client().create_bucket(Bucket="kv-cache")  # moto keeps no state across a restart
    poll_until(lambda: get(f"{server.url}/readyz")[0] == 200, what="/readyz ready again", timeout=30.0, interval=0.2)
    poll_until(lambda: l2_report(server)["is_healthy"] is True, what="/status healthy again", timeout=30.0, interval=0.2)
    assert server.stop() == 0


@pytest.mark.timeout(90)
def test_an_unusable_fs_path_is_not_ready_and_recovers(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    base = tmp_path / "l2"
    server = start_server("--l2-adapter", json.dumps({"type": "fs", "base_path": str(base)}))
    assert get(f"{server.url}/readyz")[0] == 200

    shutil.rmtree(base)
    base.write_text("a file where the directory was")  # nothing can be written under it now
    code, body = get(f"{server.url}/readyz")
    assert code == 503 and body["failing"] == ["l2:0:fs"]
    assert f"base_path {base} is not a directory" in body["checks"]["l2:0:fs"]["error"]
    assert get(f"{server.url}/status")[1]["is_healthy"] is False

    base.unlink()
    base.mkdir()
    poll_until(lambda: get(f"{server.url}/readyz")[0] == 200, what="/readyz ready again", timeout=30.0, interval=0.2)
    assert get(f"{server.url}/status")[1]["is_healthy"] is True
    assert server.stop() == 0
