"""LMCache's own `lmcache bench server --mode cpu`, of 0.5.0 and of 0.5.6, against our server: every
checksum must match, in both transfer modes, at several shapes (MHA, MLA, fp8, bf16), with
`--tp-size 2` (0.5.6), with an L1 smaller than the data, over tcp and ipc.

Needs the reference virtualenvs (`../shared/peer/reference.sh install`, `REF_VERSION=0.5.6 ...
install`); a machine without one skips that version's cases with that reason. The reference bench
exits 0 even when checksums fail, so the test reads its JSON report. One server per case: a
second run over the same sequences would find them cached and skip them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from serverproc import (
    REFERENCE_056_LMCACHE,
    REFERENCE_LMCACHE,
    ServerProcess,
    requires_reference,
    requires_reference_056,
)

pytestmark = [pytest.mark.e2e]

ZMQ_RE = re.compile(r"zmq (tcp://\S+)")
BENCH = {"0.5.0": REFERENCE_LMCACHE, "0.5.6": REFERENCE_056_LMCACHE}
NEEDS = {"0.5.0": requires_reference, "0.5.6": requires_reference_056}
MHA = "(2,256,16,4,64):float16:4"
MLA = "(1,256,16,1,128):float16:4"  # kv_size 1: one latent vector per token
FP8 = "(2,256,16,4,64):uint8:4"  # the bench's stand-in for FP8 KV
BF16 = "(2,256,16,4,64):bfloat16:4"
BIG_BF16 = "(2,256,16,8,64):bfloat16:8"  # 4 MiB chunks: 12 sequences of 8 chunks = 384 MiB


def run_reference_bench(
    version: str, server: ServerProcess, tmp_path: Path, *args: str, rpc_url: str | None = None
) -> dict[str, Any]:
    zmq_url = rpc_url or next(m.group(1) for line in server.stderr_lines if (m := ZMQ_RE.search(line)))
    report = tmp_path / "bench.json"
    result = subprocess.run(
        [str(BENCH[version]), "bench", "server", "--mode", "cpu", "--rpc-url", zmq_url, "--url", server.url,
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


def _find(node: Any, name: str) -> Any:
    """The first value of field `name` anywhere in a /status tree."""
    if isinstance(node, dict):
        if name in node:
            return node[name]
        node = list(node.values())
    if isinstance(node, list):
        for value in node:
            found = _find(value, name)
            if found is not None:
                return found
    return None


def _case(version: str, name: str, l1_gb: str, *args: str) -> Any:
    return pytest.param(version, l1_gb, args, id=f"{version}-{name}", marks=NEEDS[version])


CASES = [
    _case("0.5.0", "ed-mha", "0.25", "--transfer-mode", "engine_driven", "--kvcache-shape-spec", MHA),
    _case("0.5.0", "ld-mha", "0.25", "--transfer-mode", "lmcache_driven", "--kvcache-shape-spec", MHA),
    _case("0.5.0", "ed-fp8", "0.25", "--transfer-mode", "engine_driven", "--kvcache-shape-spec", FP8),
    _case("0.5.0", "ld-bf16", "0.25", "--transfer-mode", "lmcache_driven", "--kvcache-shape-spec", BF16),
    # L1 (51 MiB) smaller than what the run stores (384 MiB): eviction on the spot keeps every hit right
    _case("0.5.0", "ed-bf16-l1-small", "0.05", "--transfer-mode", "engine_driven", "--kvcache-shape-spec", BIG_BF16,
          "--num-tokens", "2048", "--end", "12"),
    _case("0.5.6", "ed-mha", "0.25", "--transfer-mode", "engine_driven", "--kvcache-shape-spec", MHA),
    _case("0.5.6", "ld-mha", "0.25", "--transfer-mode", "lmcache_driven", "--kvcache-shape-spec", MHA),
    _case("0.5.6", "ed-mla", "0.25", "--transfer-mode", "engine_driven", "--kvcache-shape-spec", MLA),
    _case("0.5.6", "ld-mla-tp2", "0.25", "--transfer-mode", "lmcache_driven", "--kvcache-shape-spec", MLA,
          "--tp-size", "2"),
    _case("0.5.6", "ed-bf16-tp2", "0.25", "--transfer-mode", "engine_driven", "--kvcache-shape-spec", BF16,
          "--tp-size", "2"),
    _case("0.5.6", "ld-fp8", "0.25", "--transfer-mode", "lmcache_driven", "--kvcache-shape-spec", FP8),
    # two ranks of 4 MiB objects: 32 MiB per sequence (one must fit in L1 to hit at all), 384 MiB in all
    _case("0.5.6", "ld-bf16-tp2-l1-small", "0.05", "--transfer-mode", "lmcache_driven", "--kvcache-shape-spec",
          BIG_BF16, "--num-tokens", "1024", "--end", "12", "--tp-size", "2"),
]


@pytest.mark.timeout(400)
@pytest.mark.parametrize(("version", "l1_gb", "args"), CASES)
def test_reference_bench_passes_every_checksum(
    start_server: Callable[..., ServerProcess], tmp_path: Path, version: str, l1_gb: str, args: tuple[str, ...]
) -> None:
    server = start_server("--l1-size-gb", l1_gb)
    defaults = ("--num-tokens", "1024", "--start", "0", "--end", "6")
    report = run_reference_bench(version, server, tmp_path, *defaults, *args)  # later flags win
    passed, total = _pass_rate(report)
    assert total > 0 and passed == total, report
    if float(l1_gb) < 0.1:  # the run overflowed L1: eviction made room while every hit stayed right
        with urllib.request.urlopen(f"{server.url}/status", timeout=10) as reply:
            assert _find(json.load(reply), "evicted_objects_total") > 0
    assert server.stop() == 0
    # Nothing went wrong on our side either: no failed or dropped request, no warning.
    assert not [ln for ln in server.stderr.splitlines() if " WARNING " in ln or " ERROR " in ln], server.stderr


@pytest.mark.timeout(400)
@pytest.mark.parametrize("version", [pytest.param(v, marks=NEEDS[v]) for v in ("0.5.0", "0.5.6")])
def test_reference_bench_over_the_ipc_endpoint(start_server: Callable[..., ServerProcess], tmp_path: Path, version: str) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="lmc-ref-", dir="/tmp"))  # short: a socket path is <= 107 bytes
    try:
        path = sock_dir / "lmcache.sock"
        server = start_server("--l1-size-gb", "0.25", "--ipc-path", str(path))
        report = run_reference_bench(
            version, server, tmp_path, "--kvcache-shape-spec", MHA, "--num-tokens", "1024",
            "--start", "0", "--end", "6", rpc_url=f"ipc://{path}",
        )
        passed, total = _pass_rate(report)
        assert total > 0 and passed == total, report
        assert server.stop() == 0
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.timeout(400)
@pytest.mark.skipif(not (REFERENCE_LMCACHE.exists() and REFERENCE_056_LMCACHE.exists()),
                    reason="needs both reference virtualenvs (0.5.0 and 0.5.6)")
def test_both_benches_at_once_against_one_server(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """A 0.5.0 and a 0.5.6 bench run side by side against the same server, with no flag."""
    server = start_server("--l1-size-gb", "0.25")
    zmq_url = next(m.group(1) for line in server.stderr_lines if (m := ZMQ_RE.search(line)))
    procs = {}
    for version, start in (("0.5.0", "0"), ("0.5.6", "100")):
        out = tmp_path / f"bench-{version}.json"
        procs[version] = (out, subprocess.Popen(
            [str(BENCH[version]), "bench", "server", "--mode", "cpu", "--rpc-url", zmq_url, "--url", server.url,
             "--interval", "0", "--format", "json", "--output", str(out), "-q", "--kvcache-shape-spec", MHA,
             "--num-tokens", "1024", "--start", start, "--end", str(int(start) + 6)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={"LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1",
                 "PATH": "/usr/bin:/bin"},
        ))
    for version, (out, proc) in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        passed, total = _pass_rate(json.loads(out.read_text()))
        assert total > 0 and passed == total, (version, passed, total)
    with urllib.request.urlopen(f"{server.url}/status", timeout=10) as reply:
        status = json.load(reply)
    assert status["zmq"]["clients_by_protocol"]["0.5.0"] >= 1 and status["zmq"]["clients_by_protocol"]["0.5.6"] >= 1
    assert server.stop() == 0
