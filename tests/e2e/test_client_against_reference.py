"""Our client library against the reference server (LMCache 0.5.0): the frames it sends (token
ids in msgpack's fixed-width uint32 form among them) must mean the same to it as to ours.

Needs LMCache 0.5.0 in a virtualenv (see serverproc.REFERENCE_VENV); without it this module is
skipped with that reason."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator

import pytest
import torch
from serverproc import reference_server, requires_reference

from lmcache_core.testing import poll_until
from lmcache_frontends.client import LMCacheClient, make_key, share_cpu_tensor

pytestmark = [
    pytest.mark.e2e,
    requires_reference,
]


@pytest.fixture(scope="module")
def reference_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with reference_server(1.0, log_dir=tmp_path_factory.mktemp("reference")) as url:
        yield url


def test_engine_driven_round_trip_with_a_long_prompt(reference_url: str) -> None:
    with LMCacheClient(reference_url, timeout=30) as client:
        chunk = client.get_chunk_size()
        ctx = client.register_engine_driven(3, model_name="ours-on-ref", num_layers=2, hidden_dim_size=16)
        # Ids of every msgpack width; our client sends each as a fixed-width uint32.
        tokens = [(i * 2654435761) % (1 << 32) if i % 5 == 0 else i % 70000 for i in range(20 * chunk + 7)]
        chunks = [torch.full(ctx.object_shape, float(i)).half() for i in range(20)]
        assert client.store_engine_driven(ctx, make_key("ours-on-ref", tokens, "w", end=20 * chunk, worker_id=0), chunks)
        client.end_session("w")
        client.lookup(make_key("ours-on-ref", tokens, "r"))
        assert client.wait_for_lookup("r", timeout=10) == 20
        got = client.retrieve_engine_driven(ctx, make_key("ours-on-ref", tokens, "r", start=5 * chunk, end=7 * chunk,
                                                          worker_id=0))
        assert got is not None and [float(t.flatten()[0]) for t in got] == [5.0, 6.0]
        # Another token at chunk 3 changes the hash chain from there on: the reference agrees.
        other = list(tokens)
        other[3 * chunk + 1] += 1
        client.lookup(make_key("ours-on-ref", other, "r2"))
        assert client.wait_for_lookup("r2", timeout=10) == 3
        client.free_lookup_locks(make_key("ours-on-ref", other, "r2", end=3 * chunk))
        for rid in ("r", "r2"):
            client.end_session(rid)
        client.unregister_engine_driven(3)


def test_server_driven_store_and_retrieve(reference_url: str) -> None:
    # A CPU-only reference reads 5-D tensors as HND: send HND so both sides agree on the layout.
    nb, bs, nh, hs, num_layers = 32, 16, 2, 32, 2
    names = [f"lmcache_test_ref_{uuid.uuid4().hex[:8]}_{i}" for i in range(num_layers)]
    try:
        shared = [share_cpu_tensor((2, nb, nh, bs, hs), torch.float16, n) for n in names]
        for t, _ in shared:
            t.copy_(torch.randn(t.shape).half())
        originals = [t.clone() for t, _ in shared]
        with LMCacheClient(reference_url, timeout=30) as client:
            chunk = client.get_chunk_size()
            client.register_kv_cache(9, [w for _, w in shared], model_name="ours-sd", layout_hints={"kv_layout": "HND"})
            tokens = [7] + [9906] * (2 * chunk)
            blocks = [list(range(2 * chunk // bs))]
            assert client.store(make_key("ours-sd", tokens, "s", end=2 * chunk, worker_id=0), 9, blocks)
            for t, _ in shared:
                t.zero_()
            # The reference finishes a server-driven store after its reply (on its own worker): under
            # load a lookup sent at once can still miss, so ask again (a new request each time)
            # until both chunks hit.
            attempts = itertools.count()

            def both_hit() -> str | None:
                rid = f"g{next(attempts)}"
                client.lookup(make_key("ours-sd", tokens, rid, end=2 * chunk))
                if client.wait_for_lookup(rid, timeout=10) == 2:
                    return rid
                client.end_session(rid)
                return None

            rid = poll_until(both_hit, timeout=10, what="a lookup that hits both stored chunks")
            assert client.retrieve(make_key("ours-sd", tokens, rid, end=2 * chunk, worker_id=0), 9, blocks)
            n = 2 * chunk // bs
            for (t, _), o in zip(shared, originals, strict=True):
                assert torch.equal(t[:, :n], o[:, :n])
            client.end_session("s")
            client.end_session(rid)
            client.unregister_kv_cache(9)
    finally:
        for n in names:
            if os.path.exists(f"/dev/shm/{n}"):
                os.unlink(f"/dev/shm/{n}")
