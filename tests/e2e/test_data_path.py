"""The data path end to end: a real server process and our client over real sockets."""

from __future__ import annotations

import json
import os
import re
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
import torch
import zmq
from serverproc import READY_RE, START_TIMEOUT_S, ServerProcess, launch

from lmcache_frontends.client import LMCacheClient, make_key, share_cpu_tensor
from lmcache_frontends.zmq.protocol import encode

pytestmark = pytest.mark.e2e

ZMQ_RE = re.compile(r"zmq (tcp://\S+)")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerProcess, str]]:
    sp = launch(["--chunk-size", "64"], shm_prefix="e2e_dp")
    try:
        zmq_url = ZMQ_RE.search(sp.stderr)
        assert zmq_url is not None, sp.stderr
        yield sp, zmq_url.group(1)
    finally:
        sp.terminate()


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.timeout(30)
def test_engine_driven_round_trip(server: tuple[ServerProcess, str]) -> None:
    _, url = server
    with LMCacheClient(url) as client:
        assert client.get_chunk_size() == 64
        ctx = client.register_engine_driven(1, model_name="e2e", num_layers=2, hidden_dim_size=32)
        tokens = [7] + list(range(1000, 1000 + 256))
        chunks = [torch.randn(ctx.object_shape).half() for _ in range(4)]
        assert client.store_engine_driven(ctx, make_key("e2e", tokens, "s", end=256, worker_id=0), chunks)
        client.end_session("s")
        client.lookup(make_key("e2e", tokens, "r"))
        assert client.wait_for_lookup("r") == 4
        got = client.retrieve_engine_driven(ctx, make_key("e2e", tokens, "r", end=256, worker_id=0))
        assert got is not None and all(torch.equal(a, b) for a, b in zip(chunks, got, strict=True))
        # a different prefix shares nothing
        client.lookup(make_key("e2e", [8] + tokens[1:], "r2"))
        assert client.wait_for_lookup("r2") == 0
        client.unregister_engine_driven(1)


@pytest.mark.timeout(30)
def test_server_driven_cpu_tensors_and_kvcache_check(server: tuple[ServerProcess, str]) -> None:
    proc, url = server
    nb, bs, nh, hs = 32, 16, 2, 16
    names = [f"lmcache_e2e_kv_{uuid.uuid4().hex[:8]}_{i}" for i in range(2)]
    try:
        shared = [share_cpu_tensor((2, nb, bs, nh, hs), torch.bfloat16, n) for n in names]
        kv = [t for t, _ in shared]
        for t in kv:
            t.copy_(torch.randn(t.shape).to(torch.bfloat16))
        with LMCacheClient(url) as client:
            client.register_kv_cache(7, [w for _, w in shared], model_name="ld", layout_hints={"kv_layout": "NHD"},
                                     engine_group_infos=[{"engine_group_id": 0, "layer_indices": [0, 1],
                                                          "tokens_per_block": bs, "sw_size_tokens": -1}])
            check = f"{proc.url}/kvcache/check?block_ids=[4,11]&block_size={bs}&chunk_size=4&instance_id=7"
            status, before = _get(check)
            assert status == 200 and before["num_chunks"] == 2 and before["block_id_ranges"] == [[4, 11]]
            tokens = list(range(5, 5 + 129))
            blocks = [list(range(4, 12))]
            assert client.store(make_key("ld", tokens, "s", end=128, worker_id=0), 7, blocks)
            client.end_session("s")
            for t in kv:
                t.zero_()
            client.lookup(make_key("ld", tokens, "r"))
            assert client.wait_for_lookup("r") == 2
            # skip the first 20 tokens: block 4 stays zero, the rest comes back
            assert client.retrieve(make_key("ld", tokens, "r", end=128, worker_id=0), 7, blocks, skip_first_n_tokens=20)
            assert all(int(t[:, 4].float().abs().sum()) == 0 for t in kv)
            status, partial = _get(check)
            assert partial["chunk_checksums"][1] == before["chunk_checksums"][1]
            assert partial["chunk_checksums"][0] != before["chunk_checksums"][0]
            assert _get(f"{proc.url}/kvcache/check?block_ids=[0,1]&chunk_size=1&instance_id=99")[0] == 404
            assert _get(f"{proc.url}/kvcache/check?chunk_size=1")[1]["error"] == "block_ids is required"
            assert _get(f"{proc.url}/kvcache/check?block_ids=x&chunk_size=1")[1]["error"] == "Invalid block_ids format"
            assert _get(f"{proc.url}/kvcache/check?block_ids=1&chunk_size=0")[1]["error"] == "chunk_size must be positive"
            client.unregister_kv_cache(7)
    finally:
        for n in names:
            if os.path.exists(f"/dev/shm/{n}"):
                os.unlink(f"/dev/shm/{n}")


@pytest.mark.timeout(30)
def test_malformed_frames_do_not_kill_the_loop(server: tuple[ServerProcess, str]) -> None:
    _, url = server
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        for frames in ([b"\x00", encode(99)], [b"\x01", b"\xc1"], [b"\x02"], [b"\x03", encode(5), b"\xc1", b"\x01"]):
            sock.send_multipart(frames)
    finally:
        sock.close()
    with LMCacheClient(url) as client:
        assert client.noop() == "OK"
        assert client.ping(None) is True


@pytest.mark.timeout(30)
def test_stores_larger_than_l1_evict_instead_of_failing(server: tuple[ServerProcess, str]) -> None:
    _, url = server
    with LMCacheClient(url) as client:
        # 64 tokens x 2 layers x 2 x 2048 hidden x fp16 = 1 MiB per chunk; 32 MiB of L1
        ctx = client.register_engine_driven(2, model_name="big", num_layers=2, hidden_dim_size=2048)
        last = None
        for i in range(12):  # 12 requests x 4 MiB = 48 MiB
            tokens = [i] + list(range(1, 257))
            chunks = [torch.full(ctx.object_shape, float(i)).half() for _ in range(4)]
            assert client.store_engine_driven(ctx, make_key("big", tokens, f"s{i}", end=256, worker_id=0), chunks)
            client.end_session(f"s{i}")
            last = (tokens, chunks)
        assert last is not None
        client.lookup(make_key("big", last[0], "r"))
        assert client.wait_for_lookup("r") == 4  # the newest request survived eviction
        got = client.retrieve_engine_driven(ctx, make_key("big", last[0], "r", end=256, worker_id=0))
        assert got is not None and torch.equal(got[3], last[1][3])
        client.unregister_engine_driven(2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["engine_driven", "lmcache_driven"])
def test_our_bench_passes_every_checksum(server: tuple[ServerProcess, str], mode: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from lmcache_frontends.cli.bench import add_bench_parser

    proc, url = server
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "server", "--rpc-url", url, "--url", proc.url, "--transfer-mode", mode,
                              "--num-tokens", "256", "--kvcache-shape-spec", "(2,64,16,2,32):float16:2",
                              "--start", "0" if mode == "engine_driven" else "10",
                              "--end", "3" if mode == "engine_driven" else "13", "--format", "json",
                              "--instance-id", "11" if mode == "engine_driven" else "12"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checksum_pass"] == 3 and report["pass_rate_percent"] == 100.0
    assert report["latency_ms"]["store"]["count"] == 3 and report["latency_ms"]["retrieve"]["count"] == 3


@pytest.mark.timeout(60)
def test_ipc_endpoint_of_a_real_server(start_server: Callable[..., ServerProcess]) -> None:
    import shutil
    import stat
    import tempfile
    from pathlib import Path

    sock_dir = Path(tempfile.mkdtemp(prefix="lmc-e2e-", dir="/tmp"))  # short: a socket path is <= 107 bytes
    try:
        path = sock_dir / "lmcache.sock"
        proc = start_server("--ipc-path", str(path), "--chunk-size", "64")
        line = next(ln for ln in proc.stderr_lines if READY_RE.search(ln))
        assert f"zmq-ipc ipc://{path}" in line
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        status, body = _get(f"{proc.url}/status")
        assert status == 200 and body["zmq"]["ipc_endpoint"] == f"ipc://{path}"
        with LMCacheClient(f"ipc://{path}") as client:
            ctx = client.register_engine_driven(3, model_name="ipc", num_layers=1, hidden_dim_size=16)
            tokens = list(range(64 * 3))
            chunks = [torch.randn(ctx.object_shape).half() for _ in range(3)]
            assert client.store_engine_driven(ctx, make_key("ipc", tokens, "s", worker_id=0), chunks)
            client.lookup(make_key("ipc", tokens, "r"))
            assert client.wait_for_lookup("r") == 3
            got = client.retrieve_engine_driven(ctx, make_key("ipc", tokens, "r", worker_id=0))
            assert got is not None and all(torch.equal(a, b) for a, b in zip(chunks, got, strict=True))
        # A second server on the same path is refused at startup, naming the problem.
        second = start_server("--ipc-path", str(path), wait_ready=False)
        assert second.proc.wait(START_TIMEOUT_S) == 1
        assert "another server is listening" in second.stderr
        assert proc.stop() == 0
        assert not path.exists()  # removed at shutdown
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", ["lmcache-server", "lmcache"])
def test_the_server_runs_with_the_non_temporal_copy_threshold(
    start_server: Callable[..., ServerProcess], script: str
) -> None:
    from lmcache_adapters.transfer import ntcopy

    proc = start_server(script=script)
    status, body = _get(f"{proc.url}/status")
    expected = 262144 if ntcopy.supported() else None
    assert status == 200 and body["zmq"]["non_temporal_copy_threshold"] == expected
    if expected is not None:
        # Re-executed in place: the pid the caller started is the server, with the tunable.
        environ = open(f"/proc/{proc.proc.pid}/environ", "rb").read().split(b"\0")
        assert b"GLIBC_TUNABLES=glibc.cpu.x86_non_temporal_threshold=0x40000" in environ
    assert proc.stop() == 0
    off = start_server("--nt-copy-threshold", "0", script=script)
    status, body = _get(f"{off.url}/status")
    assert status == 200 and body["zmq"]["non_temporal_copy_threshold"] is None
    assert off.stop() == 0
