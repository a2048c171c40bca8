"""Per-request routes and the `lmcache kvcache|status|describe|ping|quota` commands, in-process
against a real Waitress admin server over the in-memory stack."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.sessions import SessionManager
from lmcache_core.testing import poll_until
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.admin.server import AdminServer
from lmcache_frontends.bootstrap import Services
from lmcache_frontends.cli.main import main
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

CHUNK = 256
POOL = 16 << 20
OBJ = 1 << 20  # 1 MiB chunks: a 16 MiB pool, pins limited to 80% = 12.8 MiB


@pytest.fixture
def stack() -> Iterator[Services]:
    services = in_memory_stack(
        ServerConfig(l2_adapters=('{"type": "mock", "serde": {"type": "zlib"}}', '{"type": "mock"}')),
        pool_bytes=POOL,
    )
    assert services.engine is not None
    sessions = SessionManager(services.engine.hasher, clock=services.clock)
    # What a running data path does: its sessions answer request inspection.
    services.inspector.attach(sessions)
    _SESSIONS[id(services)] = sessions
    yield services
    services.close()
    del _SESSIONS[id(services)]


_SESSIONS: dict[int, SessionManager] = {}


@pytest.fixture
def url(stack: Services) -> Iterator[str]:
    server = AdminServer(create_app(stack), port=0)
    server.start()
    yield server.url
    server.stop()


def store_request(stack: Services, request_id: str, nchunks: int, *, end: bool = True, seed: int = 0) -> list[ObjectKey]:
    """What the data path does for a stored request: hash its tokens, write its chunks to L1."""
    sessions = _SESSIONS[id(stack)]
    tokens = [seed * 100_000 + i for i in range(nchunks * CHUNK)]
    hashes = sessions.chunk_hashes(request_id, tokens, model_name="m", world_size=1)
    keys = [ObjectKey(h, "m", kv_rank_for(1, 0), 0, "") for h in hashes]
    l1 = stack.engine.storage.l1
    reserved = l1.reserve_write(keys, [OBJ] * len(keys))
    for (result, handle), i in zip(reserved, range(len(keys)), strict=True):
        assert result.ok and handle is not None
        l1.pool.view(handle)[:] = bytes([i % 7]) * OBJ  # compressible
    l1.finish_write(keys)
    # The write-back to L2 read-locks the chunks for a moment; wait until it let them go.
    for index in range(len(stack.engine.storage.l2_adapters)):
        wait_in_l2(stack, keys, index)
    poll_until(lambda: not any(i is None or i.locked for i in l1.inspect(keys)), timeout=10,
               what="the write-back to let the chunks go")
    if end:
        sessions.end(request_id)
    return keys


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def wait_in_l2(stack: Services, keys: list[ObjectKey], adapter_index: int = 0) -> None:
    adapter = stack.engine.storage.l2_adapters[adapter_index].adapter

    def all_in_l2() -> bool:
        hits = adapter.submit_lookup_and_lock(keys).result(timeout=5)
        adapter.unlock([k for k, h in zip(keys, hits, strict=True) if h])
        return all(hits)

    poll_until(all_in_l2, timeout=10, interval=0.02, what=f"the write-back to L2 #{adapter_index} to finish")


def widths_ok(text: str) -> bool:
    return all(len(line) <= 80 for line in text.splitlines())


# ---------------------------------------------------------------------- kvcache info


def test_info_lists_exactly_the_request_chunks(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys = store_request(stack, "req-1", 3)
    store_request(stack, "other", 2, seed=9)
    code, out, _ = run(capsys, "kvcache", "info", "req-1", "--url", url, "--format", "json")
    assert code == 0
    body = json.loads(out)
    assert body["state"] == "ended" and body["total_chunks"] == 3
    assert [c["chunk_hash"] for c in body["chunks"]] == [k.chunk_hash.hex() for k in keys]
    assert all(c["in_l1"] and c["size_bytes"] == OBJ and not c["locked"] for c in body["chunks"])
    assert body["summary"]["l1_bytes"] == 3 * OBJ
    code, out, _ = run(capsys, "kvcache", "info", "req-1", "--url", url)
    assert code == 0 and widths_ok(out)
    assert "3 chunks: 3 in L1 (3.0 MiB)" in out
    assert out.count(" ready ") == 3


def test_info_token_bounds_select_chunks(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store_request(stack, "req-1", 4)
    code, out, _ = run(capsys, "kvcache", "info", "req-1", "--start", "300", "--end", "600", "--url", url, "--format", "json")
    assert code == 0
    assert [c["index"] for c in json.loads(out)["chunks"]] == [1, 2]


def test_info_of_a_live_request_shows_locks_and_l2(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys = store_request(stack, "live", 2, end=False)
    wait_in_l2(stack, keys)
    stack.engine.storage.l1.reserve_read([keys[0]])
    code, out, _ = run(capsys, "kvcache", "info", "live", "--url", url, "--format", "json")
    body = json.loads(out)
    assert code == 0 and body["state"] == "live"
    assert [c["locked"] for c in body["chunks"]] == [True, False]
    assert all(c["l2_adapters"] == ["0:mock", "1:mock"] or "0:mock" in c["l2_adapters"] for c in body["chunks"])
    # lookups in L2 are released at once: the keys can be deleted afterwards
    assert stack.engine.storage.l2_adapters[0].adapter.delete(keys) == [True, True]


def test_unknown_request_is_a_4xx_with_the_server_message(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "kvcache", "info", "nope", "--url", url)
    assert code == 1 and out == ""
    assert "HTTP 404" in err and "'nope'" in err


def test_bad_bounds_are_400(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store_request(stack, "req-1", 1)
    code, _, err = run(capsys, "kvcache", "info", "req-1", "--start", "10", "--end", "5", "--url", url)
    assert code == 1 and "HTTP 400" in err and "end (5) must be greater than start (10)" in err


# ---------------------------------------------------------------------- pin / unpin


def test_pin_keeps_chunks_against_eviction_then_unpin_releases(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys = store_request(stack, "req-1", 2)
    code, out, _ = run(capsys, "kvcache", "pin", "req-1", "--url", url)
    assert code == 0 and "pinned 2 chunks (2.0 MiB)" in out and "until unpinned" in out
    l1 = stack.engine.storage.l1
    assert l1.evict(keys)[0] == []
    assert l1.report_status()["pinned_count"] == 2
    code, out, _ = run(capsys, "kvcache", "unpin", "req-1", "--url", url, "--format", "json")
    assert code == 0 and json.loads(out)["unpinned_chunks"] == 2
    assert l1.evict(keys)[0] == keys


def test_pin_with_ttl_expires(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys = store_request(stack, "req-1", 1)
    assert run(capsys, "kvcache", "pin", "req-1", "--ttl-seconds", "30", "--url", url)[0] == 0
    stack.clock.advance(31)  # type: ignore[attr-defined]
    assert stack.engine.storage.l1.evict(keys)[0] == keys


def test_pin_beyond_capacity_is_rejected_with_exit_2(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store_request(stack, "big", 14)  # 14 MiB > 80% of 16 MiB
    code, out, _ = run(capsys, "kvcache", "pin", "big", "--url", url)
    assert code == 2
    assert out.startswith("REJECTED: ") and "less than 20% of L1 evictable" in out
    assert stack.engine.storage.l1.pinned_count() == 0
    code, out, _ = run(capsys, "kvcache", "pin", "big", "--url", url, "--format", "json")
    assert code == 2 and json.loads(out)["status"] == "rejected"


def test_pin_of_evicted_chunks_is_rejected(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys = store_request(stack, "req-1", 2)
    stack.engine.storage.l1.evict(keys[1:])
    code, out, _ = run(capsys, "kvcache", "pin", "req-1", "--url", url)
    assert code == 2 and "REJECTED: 1 of 2 chunks" in out
    assert stack.engine.storage.l1.pinned_count() == 0


# ---------------------------------------------------------------------- compress


def test_compress_restores_through_a_serde_codec_and_loads_stay_raw(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    keys = store_request(stack, "req-1", 2)
    wait_in_l2(stack, keys)
    code, out, _ = run(capsys, "kvcache", "compress", "req-1", "--method", "zstd", "--url", url, "--format", "json")
    assert code == 0
    body = json.loads(out)
    assert body["recompressed_chunks"] == 2 and body["adapter"] == "0:mock"
    assert body["bytes_before"] > 0 and body["bytes_after"] > 0
    adapter = stack.engine.storage.l2_adapters[0].adapter
    buffers = [bytearray(OBJ) for _ in keys]
    assert adapter.submit_load(keys, [memoryview(b) for b in buffers]).result(timeout=5) == [True, True]
    assert [bytes(b) for b in buffers] == [bytes([i]) * OBJ for i in range(2)]
    code, out, _ = run(capsys, "kvcache", "compress", "req-1", "--method", "zlib", "--url", url)
    assert code == 0 and "bytes before:" in out and widths_ok(out)


def test_compress_into_a_raw_adapter_is_rejected(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store_request(stack, "req-1", 1)
    code, out, _ = run(capsys, "kvcache", "compress", "req-1", "--method", "zlib", "--adapter", "1:mock", "--url", url)
    assert code == 2 and out.startswith("REJECTED: ") and "stores raw bytes" in out
    code, _, err = run(capsys, "kvcache", "compress", "req-1", "--method", "zlib", "--adapter", "nope", "--url", url)
    assert code == 1 and "HTTP 404" in err


def test_compress_with_nothing_in_l2_is_rejected(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    sessions = _SESSIONS[id(stack)]
    sessions.chunk_hashes("ghost", list(range(CHUNK)), model_name="m", world_size=1)
    code, out, _ = run(capsys, "kvcache", "compress", "ghost", "--method", "zlib", "--url", url)
    assert code == 2 and "none of the 1 chunks" in out


# ---------------------------------------------------------------------- clear, status, describe, ping, quota


def test_kvcache_clear_scoped(stack: Services, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store_request(stack, "req-1", 2)
    code, out, _ = run(capsys, "kvcache", "clear", "--model-name", "other", "--url", url)
    assert code == 0 and "model_name=other" in out
    assert stack.engine.storage.l1.object_count() == 2
    code, out, _ = run(capsys, "kvcache", "clear", "--url", url, "--format", "json")
    assert code == 0 and json.loads(out) == {"status": "ok"}
    assert stack.engine.storage.l1.object_count() == 0


def test_status_tree_and_json(url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    code, out, _ = run(capsys, "status", "--url", url)
    assert code == 0 and widths_ok(out)
    assert "\033[" not in out  # captured output is not a terminal
    assert "storage_manager  HEALTHY" in out and "memory_total_bytes: 16.0 MiB" in out
    assert "registered_gpu_ids: []" in out
    code, out, _ = run(capsys, "status", "--json", "--url", url)
    assert code == 0 and json.loads(out)["storage_manager"]["l1_manager"]["memory_total_bytes"] == POOL


def test_describe_shows_eviction_and_l2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "describe", "--url", url)
    assert code == 0 and widths_ok(out)
    assert "LRU, trigger at 80%" in out and "0:mock (mock)" in out and "16.0 MiB" in out
    code, out, _ = run(capsys, "describe", "--url", url, "--format", "json")
    doc = json.loads(out)
    assert doc["eviction"]["policy"] == "LRU" and doc["healthy"] is True
    # LMCache 0.5.6's spelling names the target: the same command.
    code, out, _ = run(capsys, "describe", "kvcache", "--url", url, "--format", "json")
    assert code == 0 and json.loads(out)["eviction"]["policy"] == "LRU"
    assert run(capsys, "ping", "kvcache", "--url", url)[0] == 0
    assert run(capsys, "ping", "engine", "--url", url)[0] == 1  # not ours to ping


def test_ping_quota_output_and_quiet(url: str, capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    code, out, _ = run(capsys, "ping", "--url", url)
    assert code == 0 and "HEALTHY, round trip" in out
    assert run(capsys, "quota", "set", "alice", "--limit-gb", "2.5", "--url", url, "-q") == (0, "", "")
    code, out, _ = run(capsys, "quota", "get", "alice", "--url", url, "--format", "json")
    assert code == 0 and json.loads(out)["limit_gb"] == 2.5
    code, out, _ = run(capsys, "quota", "list", "--url", url)
    assert code == 0 and "alice" in out and widths_ok(out)
    target = f"{tmp_path}/q.json"
    assert run(capsys, "quota", "delete", "alice", "--url", url, "--format", "json", "--output", target)[:2] == (0, "")
    with open(target) as fh:
        assert json.load(fh)["status"] == "removed"
    code, _, err = run(capsys, "quota", "set", "alice", "--limit-gb", "-1", "--url", url)
    assert code == 1 and "HTTP 400" in err and "non-negative" in err


def test_unreachable_url_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "ping", "--url", "http://127.0.0.1:9")
    assert code == 1 and out == "" and "cannot reach http://127.0.0.1:9" in err


def test_token_is_sent_as_bearer(url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str | None] = []
    import urllib.request

    from lmcache_frontends.cli import http

    real = http.open_url

    def spy(req: urllib.request.Request, timeout: float) -> object:
        seen.append(req.get_header("Authorization"))
        return real(req, timeout)

    monkeypatch.setattr(http, "open_url", spy)
    monkeypatch.setenv("LMCACHE_TOKEN", "s3cret")
    assert run(capsys, "ping", "--url", url)[0] == 0
    assert seen == ["Bearer s3cret"]
