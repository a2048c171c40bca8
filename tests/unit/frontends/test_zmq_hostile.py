"""Issue 19's reproductions, written as an attacker would send them, against an in-process
server over real ZeroMQ sockets: each client is its own DEALER connection (its own identity)."""

from __future__ import annotations

import copyreg
import logging
import os
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import torch

from lmcache_adapters.memory.shm_pool import SharedMemoryPool
from lmcache_core.clients import ClientLimits
from lmcache_core.testing import poll_until
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import bootstrap
from lmcache_frontends.client import LMCacheClient, make_key, share_cpu_tensor
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import raw_request
from lmcache_frontends.zmq.kv_caches import DataPathKVCaches
from lmcache_frontends.zmq.protocol import RequestType, encode, key_to_wire
from lmcache_frontends.zmq.server import ZmqDataPathServer

R = RequestType
CHUNK = 16
LAYERS, HIDDEN = 4, 1024  # engine-driven objects of 2*4*16*1024*2 = 256 KiB
POOL_BYTES = 16 << 20  # 64 such objects


class Stack:
    """A bootstrapped engine, its shared-memory pool and a started data-path server."""

    def __init__(self, pool_bytes: int = POOL_BYTES, **server_args: Any) -> None:
        suffix = f"hostile_{uuid.uuid4().hex[:10]}"
        self.pool = SharedMemoryPool(pool_bytes, shm_suffix=suffix, prefault="none", pin_memory=False)
        self.services = bootstrap(ServerConfig(port=0, http_port=0, chunk_size=CHUNK), memory_pool=self.pool)
        self.server = ZmqDataPathServer(self.services.engine, self.pool, clock=self.services.clock, port=0,
                                        max_workers=2, **server_args)
        self.server.start()
        # As the plugin wires it: the admin checksum routes read the registrations through this.
        self.services.engine.kv_caches.add_source(DataPathKVCaches(self.server))
        self.clients: list[LMCacheClient] = []
        self.segments: list[str] = []

    @property
    def l1(self) -> Any:
        return self.services.engine.storage.l1

    def client(self) -> LMCacheClient:
        c = LMCacheClient(self.server.url, timeout=5.0)
        self.clients.append(c)
        return c

    def segment(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float16) -> tuple[torch.Tensor, bytes]:
        name = f"hostile_kv_{uuid.uuid4().hex[:10]}"
        self.segments.append(name)
        return share_cpu_tensor(shape, dtype, name)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.server.stop()
        self.services.close()
        for name in self.segments:
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.close()


@pytest.fixture
def make_stack() -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        s = Stack(**kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def tokens_for(seed: int, chunks: int) -> list[int]:
    return [seed * 100_003 + i for i in range(chunks * CHUNK + 1)]


def chunk_data(seed: int, index: int) -> torch.Tensor:
    """What the honest writer of chunk `index` of prompt `seed` stores (distinct per chunk)."""
    g = torch.Generator().manual_seed(seed * 1000 + index)
    return torch.randn((2, LAYERS, CHUNK, HIDDEN), generator=g).half()


def register(client: LMCacheClient, iid: int = 0, model: str = "m") -> Any:
    return client.register_engine_driven(iid, model_name=model, num_layers=LAYERS, hidden_dim_size=HIDDEN)


def store(client: LMCacheClient, ctx: Any, seed: int, chunks: int, model: str = "m") -> bool:
    tokens = tokens_for(seed, chunks)
    data = [chunk_data(seed, i) for i in range(chunks)]
    return client.store_engine_driven(ctx, make_key(model, tokens, f"w{seed}", end=chunks * CHUNK, worker_id=0), data)


def hits(client: LMCacheClient, seed: int, chunks: int, rid: str, model: str = "m") -> int:
    client.lookup(make_key(model, tokens_for(seed, chunks), rid))
    return client.wait_for_lookup(rid)


# --------------------------------------------------------------------------- 1. file access


def crafted_wrapper(state: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A CpuShmTensorWrapper pickle whose state may carry anything, `validate` included (the
    reproduction: a state key shadowing the method skipped the check)."""
    module = types.ModuleType("lmcache.v1.platform.cpu.shm")

    class CpuShmTensorWrapper:
        def __init__(self, state: dict[str, Any]) -> None:
            self.state = state

        def __reduce_ex__(self, protocol: Any) -> Any:
            return (copyreg.__newobj__, (type(self),), self.state)

    CpuShmTensorWrapper.__module__ = module.__name__
    CpuShmTensorWrapper.__qualname__ = "CpuShmTensorWrapper"
    module.CpuShmTensorWrapper = CpuShmTensorWrapper  # type: ignore[attr-defined]
    for name in ("lmcache", "lmcache.v1", "lmcache.v1.platform", "lmcache.v1.platform.cpu"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    state = dict(state)
    if state.pop("shadow_validate", False):
        state["validate"] = CpuShmTensorWrapper  # pickled as a reference to the allow-listed class
    import pickle

    return pickle.dumps(CpuShmTensorWrapper(state), protocol=4)


def wrapper_state(shm_name: str, nbytes: int) -> dict[str, Any]:
    return {
        "shm_name": shm_name, "nbytes": nbytes, "handle": None, "dtype": torch.float16,
        "shape": [2, 4, 16, 2, 32], "stride": [4096, 1024, 64, 32, 1], "storage_offset": 0, "device_uuid": "cpu",
    }


LAYER_SHAPE = (2, 4, 16, 2, 32)  # [2, blocks, block size, heads, head size]: 16 KiB per layer


def test_a_crafted_wrapper_never_reads_or_writes_a_file_outside_dev_shm(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim.bin"
    secret = os.urandom(16384)
    victim.write_bytes(secret)
    depth = "/.." * 8
    attacker = stack.client()
    # The real layer for the source context, the crafted one for the target context.
    layer, real_wrapper = stack.segment(LAYER_SHAPE)
    layer.copy_(torch.randn(LAYER_SHAPE).half())
    attacker.register_kv_cache(1, [real_wrapper, real_wrapper], model_name="x")
    for state in (
        {**wrapper_state(depth + str(victim), 16384), "shadow_validate": True},  # the reproduction
        wrapper_state(depth + str(victim), 16384),  # plain ../ (always refused)
        wrapper_state(str(victim), 16384),
    ):
        crafted = crafted_wrapper(state, monkeypatch)
        attacker.register_kv_cache(2, [crafted, crafted], model_name="x")
        assert 2 not in stack.server.instances()
        tokens = list(range(1, 2 * CHUNK + 2))
        store_key = make_key("x", tokens, "w", end=2 * CHUNK, worker_id=0)
        assert attacker.store(store_key, 1, [[0, 1, 2, 3]]) is True
        attacker.lookup(make_key("x", tokens, "r"))
        assert attacker.wait_for_lookup("r") == 2
        # RETRIEVE into the crafted context (would overwrite the file), STORE from it (would read it).
        assert attacker.retrieve(make_key("x", tokens, "r", end=2 * CHUNK, worker_id=0), 2, [[0, 1, 2, 3]]) is False
        assert attacker.store(make_key("x", tokens, "w2", end=2 * CHUNK, worker_id=0), 2, [[0, 1, 2, 3]]) is False
        attacker.free_lookup_locks(make_key("x", tokens, "r", end=2 * CHUNK))
        attacker.end_session("r")
    assert victim.read_bytes() == secret
    assert attacker.noop() == "OK"


def test_symlinks_non_regular_files_and_the_pool_itself_are_refused(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"\x01" * 16384)
    link = f"hostile_link_{uuid.uuid4().hex[:8]}"
    fifo = f"hostile_fifo_{uuid.uuid4().hex[:8]}"
    stack.segments += [link, fifo]
    os.symlink(victim, f"/dev/shm/{link}")
    os.mkfifo(f"/dev/shm/{fifo}")
    attacker = stack.client()
    for name in (link, "/" + link, fifo, stack.pool.shm_name, ".", "..", "a/b", "x\x00y"):
        wrapper = crafted_wrapper(wrapper_state(name, 16384), monkeypatch)
        attacker.register_kv_cache(3, [wrapper], model_name="x")
        assert 3 not in stack.server.instances(), name
    assert victim.read_bytes() == b"\x01" * 16384


# --------------------------------------------------------------------------- 2. shared instance ids


def test_a_second_writer_of_a_key_under_the_same_instance_id_gets_no_slot(stack: Stack) -> None:
    a, b, reader = stack.client(), stack.client(), stack.client()
    ctx_a, ctx_b = register(a, 0), register(b, 0)
    # An innocent object fills the slot that K will get, so a shared slot would leak its bytes.
    assert store(reader, register(reader, 7), seed=9, chunks=1)
    reader.clear()
    tokens = tokens_for(1, 1)
    key = make_key("m", tokens, "wa", end=CHUNK, worker_id=0)
    prep_a = a.call(R.PREPARE_STORE, key_to_wire(key), 0)
    assert len(prep_a["context"]["slots"]) == 1  # A is writing K and has not written yet
    prep_b = b.call(R.PREPARE_STORE, key_to_wire(make_key("m", tokens, "wb", end=CHUNK, worker_id=0)), 0)
    assert prep_b == {"context": {"slots": [], "chunk_indices": []}}  # never a shared slot
    # B's commit of the same key (empty data) cannot publish A's half-written object.
    assert b.call(R.COMMIT_STORE, key_to_wire(make_key("m", tokens, "wb", end=CHUNK, worker_id=0)), 0, b"") is False
    assert hits(reader, 1, 1, "r0") == 0
    # B unregistering instance 0 does not drop A's registration or A's pending write.
    b.unregister_engine_driven(0)
    slot = prep_a["context"]["slots"][0]
    ctx_a.slot_tensor(slot).copy_(chunk_data(1, 0))
    assert a.call(R.COMMIT_STORE, key_to_wire(key), 0, b"") is True
    assert hits(reader, 1, 1, "r1") == 1
    got = reader.retrieve_engine_driven(register(reader, 0), make_key("m", tokens, "r1", end=CHUNK, worker_id=0))
    assert got is not None and torch.equal(got[0], chunk_data(1, 0))
    assert ctx_b.instance_id == 0


# --------------------------------------------------------------------------- 3. lock theft


def test_another_client_cannot_free_or_steal_a_readers_locks(stack: Stack) -> None:
    reader, thief = stack.client(), stack.client()
    ctx = register(reader, 1)
    register(thief, 2)
    assert store(reader, ctx, seed=3, chunks=2)
    tokens = tokens_for(3, 2)
    assert hits(reader, 3, 2, "req") == 2
    key = make_key("m", tokens, "req", end=2 * CHUNK, worker_id=0)
    prep = reader.call(R.PREPARE_RETRIEVE, key_to_wire(key), 1)
    assert prep["success"] is True
    slots = prep["context"]["slots"]
    # The thief frees the request's locks twice (same request id), clears L1, then fills it.
    for _ in range(2):
        thief.free_lookup_locks(make_key("m", tokens, "req", end=2 * CHUNK))
    thief.clear()
    thief_ctx = register(thief, 3)
    for seed in range(100, 160):
        store(thief, thief_ctx, seed=seed, chunks=1)
    # The reader's slots still hold its chunks: their memory was not handed out again.
    for i, slot in enumerate(slots):
        assert torch.equal(ctx.slot_tensor(slot), chunk_data(3, i))
    assert reader.call(R.COMMIT_RETRIEVE, key_to_wire(key), 1) is True
    # Nothing is left pending or locked afterwards.
    assert stack.l1.report_status()["pending_free_count"] == 0


def test_prepare_retrieve_needs_the_requests_own_lookup_lock(stack: Stack) -> None:
    c = stack.client()
    ctx = register(c, 1)
    assert store(c, ctx, seed=4, chunks=2)
    tokens = tokens_for(4, 2)
    key = make_key("m", tokens, "nolookup", end=2 * CHUNK, worker_id=0)
    assert c.call(R.PREPARE_RETRIEVE, key_to_wire(key), 1)["success"] is False  # no LOOKUP at all
    assert hits(c, 4, 2, "once") == 2
    once = make_key("m", tokens, "once", end=2 * CHUNK, worker_id=0)
    assert c.retrieve_engine_driven(ctx, once) is not None
    assert c.retrieve_engine_driven(ctx, once) is None  # the lookup's one lock per key is spent
    infos = stack.l1.inspect(c_keys(stack, tokens))
    assert all(i is not None and i.read_lock_count == 0 for i in infos)  # nothing released twice


def c_keys(stack: Stack, tokens: list[int]) -> list[Any]:
    dp = stack.server.data_path
    k = make_key("m", tokens, "probe", end=2 * CHUNK, worker_id=0)
    return dp.keys_of(k, dp.range_hashes(k), 0)


def test_vllm_style_lookup_on_one_socket_retrieve_on_another(stack: Stack) -> None:
    scheduler, worker = stack.client(), stack.client()
    ctx = register(worker, 5)
    assert store(worker, ctx, seed=6, chunks=2)
    tokens = tokens_for(6, 2)
    assert hits(scheduler, 6, 2, "vllm-req") == 2
    got = worker.retrieve_engine_driven(ctx, make_key("m", tokens, "vllm-req", end=2 * CHUNK, worker_id=0))
    assert got is not None and all(torch.equal(g, chunk_data(6, i)) for i, g in enumerate(got))
    # The worker's FREE of the scheduler's request releases nothing; the scheduler's own does.
    assert hits(scheduler, 6, 2, "vllm-2") == 2
    worker.free_lookup_locks(make_key("m", tokens, "vllm-2", end=2 * CHUNK))
    assert all(i is not None and i.read_lock_count == 1 for i in stack.l1.inspect(c_keys(stack, tokens)))
    scheduler.free_lookup_locks(make_key("m", tokens, "vllm-2", end=2 * CHUNK))
    assert all(i is not None and i.read_lock_count == 0 for i in stack.l1.inspect(c_keys(stack, tokens)))


# --------------------------------------------------------------------------- 4. flush by registration


def test_an_absurd_registration_is_refused_and_evicts_nothing(stack: Stack) -> None:
    victim, attacker = stack.client(), stack.client()
    ctx = register(victim, 1)
    for seed in range(8):
        assert store(victim, ctx, seed=seed, chunks=1)
    reclaims = stack.l1.report_status()["reclaim_calls_total"]
    reply = attacker.call(R.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, {
        "instance_id": 9, "model_name": "m", "world_size": 1, "block_size": 16,
        "num_layers": 2**40, "hidden_dim_size": 2**40, "dtype_str": "float16", "use_mla": False,
    })
    assert reply == {"shm_name": "", "pool_size": 0}  # the type's failure value
    tokens = tokens_for(50, 1)
    prep = attacker.call(R.PREPARE_STORE, key_to_wire(make_key("m", tokens, "x", end=CHUNK, worker_id=0)), 9)
    assert prep == {"context": {"slots": [], "chunk_indices": []}}
    assert sum(hits(victim, seed, 1, f"v{seed}") for seed in range(8)) == 8
    assert stack.l1.report_status()["reclaim_calls_total"] == reclaims


# --------------------------------------------------------------------------- 5. CLEAR never poisons a key


@pytest.mark.parametrize("how", ["zmq", "http"])
def test_clear_while_a_reader_holds_locks_leaves_the_key_storable(stack: Stack, how: str) -> None:
    c = stack.client()
    ctx = register(c, 1)
    assert store(c, ctx, seed=7, chunks=2)
    tokens = tokens_for(7, 2)
    assert hits(c, 7, 2, "locked") == 2
    if how == "zmq":
        stack.client().clear()
    else:
        assert create_app(stack.services).test_client().post("/clear-cache").status_code == 200
    # The retrieve of the cleared chunks fails (and never blocks anything)...
    assert c.retrieve_engine_driven(ctx, make_key("m", tokens, "locked", end=2 * CHUNK, worker_id=0)) is None
    # ...and the key can be stored again at once, and read back.
    fresh = [chunk_data(70, i) for i in range(2)]
    assert c.store_engine_driven(ctx, make_key("m", tokens, "w2", end=2 * CHUNK, worker_id=0), fresh) is True
    assert hits(c, 7, 2, "again") == 2
    got = c.retrieve_engine_driven(ctx, make_key("m", tokens, "again", end=2 * CHUNK, worker_id=0))
    assert got is not None and all(torch.equal(g, f) for g, f in zip(got, fresh, strict=True))


def test_clear_under_a_prepared_retrieve_keeps_its_slot_until_commit(stack: Stack) -> None:
    c, other = stack.client(), stack.client()
    ctx = register(c, 1)
    assert store(c, ctx, seed=8, chunks=1)
    tokens = tokens_for(8, 1)
    assert hits(c, 8, 1, "inflight") == 1
    key = make_key("m", tokens, "inflight", end=CHUNK, worker_id=0)
    prep = c.call(R.PREPARE_RETRIEVE, key_to_wire(key), 1)
    other.clear()
    octx = register(other, 2)
    # The same key stored again at once lands in other memory; the pinned slot is untouched.
    assert other.store_engine_driven(octx, make_key("m", tokens, "w", end=CHUNK, worker_id=0), [chunk_data(80, 0)])
    for seed in range(200, 262):
        store(other, octx, seed=seed, chunks=1)
    assert torch.equal(ctx.slot_tensor(prep["context"]["slots"][0]), chunk_data(8, 0))
    assert c.call(R.COMMIT_RETRIEVE, key_to_wire(key), 1) is True
    assert stack.l1.report_status()["pending_free_count"] == 0


# --------------------------------------------------------------------------- 7. memory and stalls


def test_an_oversized_key_is_refused_before_hashing(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(limits=ClientLimits(max_tokens_per_key=4096))
    c = stack.client()
    register(c, 1)
    big = list(range(200_000))
    started = time.monotonic()
    c.lookup(make_key("m", big, "huge"))
    assert c.query_prefetch_status("huge") == 0
    assert time.monotonic() - started < 2.0
    assert stack.server.sessions.active_count() == 0  # nothing was hashed
    assert c.noop() == "OK"


def test_frames_over_the_limit_drop_only_their_sender(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(max_frame_bytes=1 << 20)
    honest = stack.client()
    # Over --max-frame-bytes: ZeroMQ drops the sender's connection; nobody else notices.
    assert raw_request(stack.server.url, [encode(0), encode(int(R.LOOKUP)), b"\x00" * (2 << 20), encode(1)], 300) is None
    assert honest.noop() == "OK"
    # Under it but over what a key may hold: refused before decoding, and answered at once.
    frame = encode(key_to_wire(make_key("m", list(range(150_000)), "big")))
    assert len(frame) < 1 << 20
    reply = raw_request(stack.server.url, [encode(1), encode(int(R.LOOKUP)), frame, encode(1)], 5000)
    assert reply is not None and len(reply) == 2
    assert stack.server.sessions.active_count() == 0


def test_sessions_and_lookups_are_capped_per_client(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(limits=ClientLimits(max_sessions_per_client=50, max_lookups_per_client=20, max_sessions=500))
    flood, honest = stack.client(), stack.client()
    ctx = register(honest, 1)
    assert store(honest, ctx, seed=11, chunks=2)
    assert hits(honest, 11, 2, "honest") == 2
    for i in range(400):
        flood.lookup(make_key("m", tokens_for(11, 2), f"flood-{i}"))
    assert flood.noop() == "OK"
    sessions, dp = stack.server.sessions, stack.server.data_path
    # The flood's own caps (the honest client's session and lease come on top).
    assert sessions.active_count() <= 50 + 2
    assert dp.active_job_count() <= 20
    assert dp.leases.count() <= 20 + 1
    # The flood's locks beyond its cap were given back: only 20 leases' worth remain (+ honest).
    infos = stack.l1.inspect(c_keys(stack, tokens_for(11, 2)))
    assert all(i is not None and i.read_lock_count <= 21 for i in infos)
    # The honest client's session and lease are untouched.
    got = honest.retrieve_engine_driven(ctx, make_key("m", tokens_for(11, 2), "honest", end=2 * CHUNK, worker_id=0))
    assert got is not None


def test_uncommitted_prepares_cannot_hold_all_of_l1(stack: Stack) -> None:
    hog, honest = stack.client(), stack.client()
    register(hog, 1)
    held = 0
    for seed in range(17):
        tokens = tokens_for(300 + seed, 4)
        reply = hog.call(R.PREPARE_STORE, key_to_wire(make_key("m", tokens, f"h{seed}", end=4 * CHUNK, worker_id=0)), 1)
        held += len(reply["context"]["slots"])
    # A quarter of L1 (16 of 64 objects) plus the first request's 4 at most.
    assert held <= 20
    assert store(honest, register(honest, 2), seed=400, chunks=8)


def test_a_worker_keeps_no_frame_of_a_finished_request(stack: Stack) -> None:
    c = stack.client()
    ctx = register(c, 1)
    assert store(c, ctx, seed=12, chunks=1)
    assert c.call(R.COMMIT_STORE, key_to_wire(make_key("m", tokens_for(12, 1), "x", end=CHUNK, worker_id=0)), 1,
                  b"\x80" + b"\x00" * (4 << 20)) is False  # a 4 MiB bad pickle: fails
    workers = [t for t in threading.enumerate() if t.name.startswith("lmcache-zmq-worker")]

    def held() -> list[str]:
        frames = sys._current_frames()
        out = []
        for thread in workers:
            frame = frames.get(thread.ident or -1)
            while frame is not None:
                if frame.f_code.co_name == "_worker_loop":
                    out += [name for name in ("item", "job", "replies", "reply") if name in frame.f_locals]
                frame = frame.f_back
        return out

    # The reply may reach us a moment before its worker is back waiting for work.
    poll_until(lambda: not held(), interval=0.01, what="the workers to drop the finished request's frames", detail=held)


# --------------------------------------------------------------------------- 8. replies and logs


def test_unknown_instance_ids_get_failure_replies(stack: Stack) -> None:
    c = stack.client()
    tokens = tokens_for(13, 1)
    key = key_to_wire(make_key("m", tokens, "u", end=CHUNK, worker_id=0))
    assert c.call(R.PREPARE_STORE, key, 404) == {"context": {"slots": [], "chunk_indices": []}}
    assert c.call(R.COMMIT_STORE, key, 404, b"") is False
    assert c.call(R.PREPARE_RETRIEVE, key, 404) == {"success": False, "data": b"", "context": {}}
    assert c.call(R.COMMIT_RETRIEVE, key, 404) is False
    assert c.call(R.STORE, key, 404, [[0]], b"h") == [b"h", False]
    assert c.call(R.RETRIEVE, key, 404, [[0]], b"h", 0) == [b"h", False]
    assert c.call(R.UNREGISTER_KV_CACHE, 404) is None  # no response frame: answered at once


def test_a_failed_registration_leaves_no_instance_and_every_transfer_fails(stack: Stack) -> None:
    c = stack.client()
    bad = msgpack.ExtType(1, b"not a pickle")
    c.call(R.REGISTER_KV_CACHE, 5, [bad], "m", 1, "vllm", {}, [])
    assert 5 not in stack.server.instances()
    key = key_to_wire(make_key("m", tokens_for(14, 1), "f", end=CHUNK, worker_id=0))
    assert c.call(R.STORE, key, 5, [[0]], b"h") == [b"h", False]


def test_repeated_bad_requests_are_logged_rate_limited(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    c = stack.client()
    key = key_to_wire(make_key("m", tokens_for(15, 1), "l", end=CHUNK, worker_id=0))
    with caplog.at_level(logging.WARNING, logger="lmcache_frontends.zmq"):
        for _ in range(50):
            assert c.call(R.PREPARE_STORE, key, 777) == {"context": {"slots": [], "chunk_indices": []}}
    lines = [r for r in caplog.records if "prepare_store failed" in r.getMessage()]
    assert 1 <= len(lines) <= 2
    assert stack.server.report_status()["suppressed_log_lines_total"] >= 48


def test_kvcache_check_never_answers_with_another_clients_tensors(stack: Stack) -> None:
    a, b = stack.client(), stack.client()
    layer_a, wrapper_a = stack.segment(LAYER_SHAPE)
    layer_a.copy_(torch.randn(LAYER_SHAPE).half())
    a.register_kv_cache(0, [wrapper_a], model_name="x")
    http = create_app(stack.services).test_client()
    one = http.get("/kvcache/check?block_ids=0,1&chunk_size=1&instance_id=0")
    assert one.status_code == 200
    layer_b, wrapper_b = stack.segment(LAYER_SHAPE)
    b.register_kv_cache(0, [wrapper_b], model_name="x")  # another `lmcache bench`, same id
    two = http.get("/kvcache/check?block_ids=0,1&chunk_size=1&instance_id=0")
    assert two.status_code == 409 and "2 clients" in two.get_json()["error"]
    b.unregister_kv_cache(0)
    again = http.get("/kvcache/check?block_ids=0,1&chunk_size=1&instance_id=0")
    assert again.status_code == 200 and again.get_json() == one.get_json()
