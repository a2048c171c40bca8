"""A real `lmcache-server` with L1 on a Device-DAX stand-in (a regular file): the
/reconfigure/dax/l1/* routes (add, status, remove with live objects, errors), /status and the
ready file, engines in pickle mode (our client and our bench: LMCache 0.5.0's bench cannot use
pickle mode, see PROTOCOL.md 4.6) and LMCache 0.5.0's bench server-driven, every checksum."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from serverproc import ServerProcess
from test_reference_bench import NEEDS, run_reference_bench

from lmcache_adapters.testing.memory_contract import device_file
from lmcache_core.testing import poll_until
from lmcache_frontends.cli.main import main as lmcache_main
from lmcache_frontends.client import LMCacheClient, make_key

pytestmark = pytest.mark.e2e

ZMQ_RE = re.compile(r"zmq (tcp://\S+)")
MiB = 1 << 20
L1_GB = "0.03125"  # 32 MiB



def dax_server(start_server: Callable[..., ServerProcess], tmp_path: Path, *flags: str) -> ServerProcess:
    l1 = device_file(tmp_path / "l1.img", 64 * MiB)
    # LMCache 0.5.6's Device-DAX command line, as its operators write it.
    return start_server("--l1-devdax-path", l1, "--l1-size-gb", L1_GB, "--no-l1-use-lazy", "--shm-name", "", *flags)


def call(server: ServerProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def rpc_url(server: ServerProcess) -> str:
    return next(m.group(1) for line in server.stderr_lines if (m := ZMQ_RE.search(line)))


@pytest.mark.timeout(120)
def test_arenas_are_added_listed_and_drained_on_a_running_server(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    ready = tmp_path / "ready.json"
    server = dax_server(start_server, tmp_path, "--ready-file", str(ready))
    # Written just after the ready line, by the server process.
    poll_until(ready.exists, timeout=10, interval=0.05, what="the ready file", detail=lambda: server.stderr)
    info = json.loads(ready.read_text())
    assert info["l1_shm_name"] == "" and info["l1_capacity_bytes"] == 32 * MiB
    b = device_file(tmp_path / "b.img", 32 * MiB)
    assert call(server, "GET", "/reconfigure/dax/l1/status")[1]["arenas"][0]["is_primary"] is True
    status, added = call(server, "POST", "/reconfigure/dax/l1/add", {"device_path": b, "size": "16MiB"})
    assert status == 200 and added["added"]["size_in_bytes"] == 16 * MiB
    assert call(server, "POST", "/reconfigure/dax/l1/add", {"device_path": b, "size": 4096})[0] == 409
    assert call(server, "POST", "/reconfigure/dax/l1/add", {"device_path": b, "size": "lots"})[0] == 400
    assert call(server, "POST", "/reconfigure/dax/l1/remove", {"device_path": str(tmp_path / "l1.img")})[0] == 409

    with LMCacheClient(rpc_url(server), timeout=30) as engine:
        ctx = engine.register_engine_driven(1, model_name="m", num_layers=8, hidden_dim_size=512)
        assert ctx.pickle_mode  # the arenas are never offered to engines by name
        chunk = engine.get_chunk_size()
        n = 10  # 4 MiB objects: 8 fill the primary, 2 land in b.img
        tokens = [5] + [9906] * (n * chunk)
        chunks = [torch.full(ctx.object_shape, float(i)).half() for i in range(n)]
        for i in range(n):
            assert engine.store_engine_driven(ctx, make_key("m", tokens, f"w{i}", start=i * chunk, end=(i + 1) * chunk,
                                                            worker_id=0), [chunks[i]])
            engine.end_session(f"w{i}")
        arenas = call(server, "GET", "/reconfigure/dax/l1/status")[1]["arenas"]
        assert [a["active_allocations"] for a in arenas] == [8, 2]
        pool = call(server, "GET", "/status")[1]["storage_manager"]["l1_manager"]["pool"]
        assert pool["backend"] == "devdax" and [a["device_type"] for a in pool["arenas"]] == ["file", "file"]

        status, removed = call(server, "POST", "/reconfigure/dax/l1/remove", {"device_path": b})
        assert status == 200 and removed["removed"]["arenas"][0]["state"] == "removed"
        assert call(server, "POST", "/reconfigure/dax/l1/remove", {"device_path": b})[0] == 404
        engine.lookup(make_key("m", tokens, "r"))
        assert engine.wait_for_lookup("r", timeout=10) == 8  # the two in b.img are misses, never stale hits
        got = engine.retrieve_engine_driven(ctx, make_key("m", tokens, "r", start=6 * chunk, end=8 * chunk, worker_id=0))
        assert got is not None and [float(t.flatten()[0]) for t in got] == [6.0, 7.0]
        engine.end_session("r")
    assert server.stop() == 0


@pytest.mark.timeout(120)
def test_our_bench_in_pickle_mode_passes_every_checksum(
    start_server: Callable[..., ServerProcess], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = dax_server(start_server, tmp_path)
    rc = lmcache_main(["bench", "server", "--rpc-url", rpc_url(server), "--url", server.url, "--mode", "cpu",
                       "--transfer-mode", "engine_driven", "--kvcache-shape-spec", "(2,256,16,4,64):float16:4",
                       "--num-tokens", "1024", "--end", "12", "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["checksum_pass"] == 12 and report["pass_rate_percent"] == 100.0, report
    assert server.stop() == 0


@pytest.mark.parametrize("version", [pytest.param(v, marks=NEEDS[v]) for v in ("0.5.0", "0.5.6")])
@pytest.mark.timeout(400)
def test_reference_bench_server_driven_passes_every_checksum(
    start_server: Callable[..., ServerProcess], tmp_path: Path, version: str
) -> None:
    server = dax_server(start_server, tmp_path)
    report = run_reference_bench(
        version, server, tmp_path, "--kvcache-shape-spec", "(2,256,16,4,64):bfloat16:4", "--num-tokens", "1024",
        "--start", "0", "--end", "12", "--transfer-mode", "lmcache_driven",
    )
    results = report["metrics"]["results"]
    assert int(results["total_requests"]) > 0 and int(results["checksum_ok"]) == int(results["total_requests"]), report
    assert server.stop() == 0
