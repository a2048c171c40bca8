"""LMCache 0.5.0's own `lmcache bench server` against our server: every checksum must match.

Needs the reference installed by `../shared/peer/reference.sh install` (a 2.3 GB venv); machines
without it skip this module with that reason. The reference bench exits 0 even when checksums
fail, so the test reads its JSON report."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from serverproc import REFERENCE_LMCACHE, ServerProcess, requires_reference

pytestmark = [
    pytest.mark.e2e,
    requires_reference,
]

ZMQ_RE = re.compile(r"zmq (tcp://\S+)")


def run_reference_bench(server: ServerProcess, tmp_path: Path, *args: str, rpc_url: str | None = None) -> dict[str, Any]:
    zmq_url = rpc_url or next(m.group(1) for line in server.stderr_lines if (m := ZMQ_RE.search(line)))
    report = tmp_path / "bench.json"
    result = subprocess.run(
        [str(REFERENCE_LMCACHE), "bench", "server", "--mode", "cpu", "--rpc-url", zmq_url, "--url", server.url,
         "--interval", "0", "--format", "json", "--output", str(report), "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(report.read_text())


def _pass_rate(report: dict[str, Any]) -> tuple[int, int]:
    """(checksums that matched, requests) from the bench's JSON report."""
    results = report["metrics"]["results"]
    return int(results["checksum_ok"]), int(results["total_requests"])


@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    ("shape", "tokens", "l1_gb", "transfer"),
    [
        ("(2,256,16,4,64):float16:4", "1024", "0.25", "engine_driven"),
        # L1 smaller than what the run stores: eviction on the spot must keep every hit right
        ("(2,256,16,8,64):bfloat16:8", "2048", "0.0625", "engine_driven"),
        ("(2,256,16,4,64):bfloat16:4", "1024", "0.25", "lmcache_driven"),
    ],
)
def test_reference_bench_passes_every_checksum(
    start_server: Callable[..., ServerProcess], tmp_path: Path, shape: str, tokens: str, l1_gb: str, transfer: str
) -> None:
    server = start_server("--l1-size-gb", l1_gb)
    report = run_reference_bench(
        server, tmp_path, "--kvcache-shape-spec", shape, "--num-tokens", tokens, "--start", "0", "--end", "12",
        "--transfer-mode", transfer,
    )
    passed, total = _pass_rate(report)
    assert total > 0 and passed == total, report
    assert server.stop() == 0


@pytest.mark.timeout(400)
def test_reference_bench_over_the_ipc_endpoint(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="lmc-ref-", dir="/tmp"))  # short: a socket path is <= 107 bytes
    try:
        path = sock_dir / "lmcache.sock"
        server = start_server("--l1-size-gb", "0.25", "--ipc-path", str(path))
        report = run_reference_bench(
            server, tmp_path, "--kvcache-shape-spec", "(2,256,16,4,64):float16:4", "--num-tokens", "1024",
            "--start", "0", "--end", "8", rpc_url=f"ipc://{path}",
        )
        passed, total = _pass_rate(report)
        assert total > 0 and passed == total, report
        assert server.stop() == 0
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
