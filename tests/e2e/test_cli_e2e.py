"""The `lmcache` operator commands as subprocesses against a real server with the data path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch
from serverproc import launch

from lmcache_frontends.client import LMCacheClient, make_key

pytestmark = pytest.mark.e2e

ZMQ_RE = re.compile(r"zmq (tcp://\S+)")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, str]]:
    sp = launch(["--chunk-size", "64", "--l2-adapter", '{"type": "mock", "serde": {"type": "zlib"}}'], shm_prefix="e2e_cli")
    try:
        zmq_url = ZMQ_RE.search(sp.stderr)
        assert zmq_url is not None, sp.stderr
        yield sp.url, zmq_url.group(1)
    finally:
        sp.terminate()


def lmcache(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "lmcache_frontends.cli.main", *argv],
        capture_output=True, text=True, timeout=60, env=full_env,
    )


def fits(text: str) -> bool:
    return all(len(line) <= 80 for line in text.splitlines())


@pytest.mark.timeout(120)
def test_status_describe_ping_quota_in_both_formats(server: tuple[str, str]) -> None:
    url, _ = server
    for argv in (["status"], ["describe"], ["ping"], ["quota", "list"]):
        term = lmcache(*argv, "--url", url)
        assert term.returncode == 0, term.stderr
        assert term.stdout and fits(term.stdout) and "\033[" not in term.stdout
        js = lmcache(*argv, "--url", url, "--format", "json")
        assert js.returncode == 0, js.stderr
        json.loads(js.stdout)
    assert "storage_manager  HEALTHY" in lmcache("status", "--url", url).stdout
    assert json.loads(lmcache("status", "--json", "--url", url).stdout)["chunk_size"] == 64
    env_url = lmcache("ping", env={"LMCACHE_URL": url})
    assert env_url.returncode == 0 and "HEALTHY" in env_url.stdout


@pytest.mark.timeout(60)
def test_unreachable_and_4xx(server: tuple[str, str]) -> None:
    url, _ = server
    down = lmcache("status", "--url", "http://127.0.0.1:9")
    assert down.returncode == 1 and "cannot reach http://127.0.0.1:9" in down.stderr
    missing = lmcache("kvcache", "info", "no-such-request", "--url", url)
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr and "no-such-request" in missing.stderr
    bad = lmcache("quota", "set", "alice", "--limit-gb", "-1", "--url", url, "--format", "json")
    assert bad.returncode == 1 and "non-negative" in json.loads(bad.stdout)["error"]


@pytest.mark.timeout(120)
def test_kvcache_info_pin_compress_after_a_request(server: tuple[str, str]) -> None:
    url, zmq_url = server
    with LMCacheClient(zmq_url) as client:
        ctx = client.register_engine_driven(3, model_name="cli", num_layers=2, hidden_dim_size=32)
        tokens = [11] + list(range(5000, 5000 + 256))
        chunks = [torch.randn(ctx.object_shape).half() for _ in range(4)]
        assert client.store_engine_driven(ctx, make_key("cli", tokens, "cli-req", end=256, worker_id=0), chunks)
        client.end_session("cli-req")
        client.unregister_engine_driven(3)
    status = json.loads(lmcache("status", "--json", "--url", url).stdout)
    l1 = status["storage_manager"]["l1_manager"]
    info = lmcache("kvcache", "info", "cli-req", "--url", url, "--format", "json")
    assert info.returncode == 0, info.stderr
    body = json.loads(info.stdout)
    # exactly the chunks the request stored: four, all in L1, and nothing else is in L1
    assert body["total_chunks"] == 4 and len(body["chunks"]) == 4
    assert all(c["in_l1"] for c in body["chunks"])
    assert l1["total_object_count"] == 4 and body["summary"]["l1_bytes"] == l1["object_bytes"]
    term = lmcache("kvcache", "info", "cli-req", "--url", url)
    assert term.returncode == 0 and fits(term.stdout) and "4 chunks: 4 in L1" in term.stdout

    pin = lmcache("kvcache", "pin", "cli-req", "--ttl-seconds", "60", "--url", url)
    assert pin.returncode == 0 and "pinned 4 chunks" in pin.stdout
    assert lmcache("kvcache", "unpin", "cli-req", "--url", url, "--format", "json").returncode == 0

    deadline_polls = 200
    for _ in range(deadline_polls):  # write-back to L2 is asynchronous
        got = json.loads(lmcache("kvcache", "info", "cli-req", "--url", url, "--format", "json").stdout)
        if got["summary"]["in_l2"].get("0:mock") == 4:
            break
    else:
        raise AssertionError("chunks never reached L2")
    comp = lmcache("kvcache", "compress", "cli-req", "--method", "zstd", "--url", url, "--format", "json")
    assert comp.returncode == 0, comp.stdout + comp.stderr
    assert json.loads(comp.stdout)["recompressed_chunks"] == 4

    assert lmcache("kvcache", "clear", "--url", url).returncode == 0
    rejected = lmcache("kvcache", "pin", "cli-req", "--url", url)
    assert rejected.returncode == 2 and rejected.stdout.startswith("REJECTED: ")
    assert "not readable in L1" in rejected.stdout
