"""The ZeroMQ data path over an L1 on Device-DAX stand-ins (regular files): engine-driven engines
in pickle mode, server-driven gathers and scatters into the arenas, objects in an added arena, and
a truncated arena file costing one request, never the server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lmcache_adapters.memory.dax_pool import DaxMemoryPool
from lmcache_adapters.memory.faultguard import native_guard
from lmcache_adapters.testing.memory_contract import device_file
from lmcache_frontends.bootstrap import Services, bootstrap
from lmcache_frontends.client import LMCacheClient, make_key, share_cpu_tensor
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.zmq.server import ZmqDataPathServer

CHUNK = 16
MiB = 1 << 20



class DataPath:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pool = DaxMemoryPool(device_file(tmp / "a.img", MiB), MiB, pin_memory=False)
        self.services: Services = bootstrap(ServerConfig(port=0, http_port=0, chunk_size=CHUNK), memory_pool=self.pool)
        self.server = ZmqDataPathServer(self.services.engine, self.pool, clock=self.services.clock, port=0, max_workers=2)
        self.server.start()

    def close(self) -> None:
        self.server.stop()
        self.services.close()


@pytest.fixture
def dp(tmp_path: Path) -> Iterator[DataPath]:
    d = DataPath(tmp_path)
    yield d
    d.close()


def test_engine_driven_round_trip_in_pickle_mode_across_arenas(dp: DataPath) -> None:
    with LMCacheClient(dp.server.url, timeout=5.0) as engine:
        ctx = engine.register_engine_driven(1, model_name="m", num_layers=2, hidden_dim_size=512)
        assert ctx.pickle_mode and ctx.shm_name == "" and ctx.pool_size == 0
        object_bytes = 2 * 2 * CHUNK * 512 * 2  # 64 KiB
        per_arena = MiB // object_bytes
        dp.pool.add_arena(device_file(dp.tmp / "b.img", MiB), MiB)
        n = per_arena + 4  # the last four land in the added arena
        tokens = list(range(1, n * CHUNK + 1))
        chunks = [torch.full(ctx.object_shape, float(i)).half() for i in range(n)]
        assert engine.store_engine_driven(ctx, make_key("m", tokens, "w", worker_id=0), chunks)
        arenas = {a["device_path"]: a["active_allocations"] for a in dp.pool.arena_statuses()}
        assert arenas == {str(dp.tmp / "a.img"): per_arena, str(dp.tmp / "b.img"): 4}
        engine.lookup(make_key("m", tokens, "r"))
        assert engine.wait_for_lookup("r", timeout=5) == n
        got = engine.retrieve_engine_driven(ctx, make_key("m", tokens, "r", start=(n - 3) * CHUNK, worker_id=0))
        assert got is not None and [float(t.flatten()[0]) for t in got] == [float(n - 3), float(n - 2), float(n - 1)]


def test_server_driven_gather_and_scatter_through_the_arena(dp: DataPath) -> None:
    nb, bs, nh, hs = 8, 4, 2, 8
    names = [f"lmcache_test_dax_{uuid.uuid4().hex[:8]}_{i}" for i in range(2)]
    try:
        shared = [share_cpu_tensor((2, nb, bs, nh, hs), torch.float16, name) for name in names]
        for t, _ in shared:
            t.copy_(torch.randn(t.shape).half())
        originals = [t.clone() for t, _ in shared]
        with LMCacheClient(dp.server.url, timeout=5.0) as engine:
            engine.register_kv_cache(3, [w for _, w in shared], model_name="sd")
            tokens = list(range(100, 100 + 2 * CHUNK))
            blocks = [list(range(2 * CHUNK // bs))]
            assert engine.store(make_key("sd", tokens, "s", worker_id=0), 3, blocks)
            assert dp.pool.used_bytes > 0
            for t, _ in shared:
                t.zero_()
            engine.lookup(make_key("sd", tokens, "g"))
            assert engine.wait_for_lookup("g", timeout=5) == 2
            assert engine.retrieve(make_key("sd", tokens, "g", worker_id=0), 3, blocks)
            for (t, _), o in zip(shared, originals, strict=True):
                assert torch.equal(t[:, : 2 * CHUNK // bs], o[:, : 2 * CHUNK // bs])
    finally:
        for name in names:
            if os.path.exists(f"/dev/shm/{name}"):
                os.unlink(f"/dev/shm/{name}")


@pytest.mark.skipif(not native_guard(), reason="the native guard was not built (no C compiler)")
def test_a_truncated_arena_file_fails_one_request_and_its_objects_go(dp: DataPath) -> None:
    with LMCacheClient(dp.server.url, timeout=5.0) as engine:
        ctx = engine.register_engine_driven(1, model_name="t", num_layers=2, hidden_dim_size=512)
        tokens = list(range(1, 4 * CHUNK + 1))
        chunks = [torch.full(ctx.object_shape, 3.0).half() for _ in range(4)]
        assert engine.store_engine_driven(ctx, make_key("t", tokens, "w", worker_id=0), chunks)
        os.truncate(dp.tmp / "a.img", 0)
        engine.lookup(make_key("t", tokens, "r"))
        assert engine.wait_for_lookup("r", timeout=5) == 4
        assert engine.retrieve_engine_driven(ctx, make_key("t", tokens, "r", worker_id=0)) is None
        assert dp.services.storage is not None and dp.services.storage.l1.object_count() == 0
        assert os.path.getsize(dp.tmp / "a.img") == MiB
        assert dp.pool.report_status()["truncation_recoveries_total"] == 1
        # The server goes on: the same chunks store and read back.
        assert engine.store_engine_driven(ctx, make_key("t", tokens, "w2", worker_id=0), chunks)
        engine.lookup(make_key("t", tokens, "r2"))
        assert engine.wait_for_lookup("r2", timeout=5) == 4
        got = engine.retrieve_engine_driven(ctx, make_key("t", tokens, "r2", worker_id=0))
        assert got is not None and all(float(t.flatten()[0]) == 3.0 for t in got)
