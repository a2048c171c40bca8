"""Issue 19 against the real `lmcache-server` process: truncated shared memory (SIGBUS) must fail
one request, never the server; and many clients racing CLEAR and `POST /clear-cache` never read
a wrong byte."""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from serverproc import READY_RE, ServerProcess

from lmcache_adapters.memory.faultguard import native_guard
from lmcache_core.testing import poll_until
from lmcache_frontends.client import LMCacheClient, make_key, share_cpu_tensor
from lmcache_frontends.zmq.protocol import RequestType, key_to_wire

pytestmark = pytest.mark.e2e

ZMQ_RE = re.compile(r"zmq (tcp://\S+)")
CHUNK = 16
LAYER = (2, 64, 16, 2, 16)  # [2, blocks, block size, heads, head size]: one block per chunk


class Running:
    """A started server: its process, admin and data-path URLs, the L1 segment's path."""

    def __init__(self, proc: ServerProcess, zmq_url: str, pool_path: str) -> None:
        self.proc, self.zmq_url, self.pool_path = proc, zmq_url, pool_path
        self.segments: list[str] = []

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.proc.url + "/status", timeout=10) as resp:
            return json.loads(resp.read())

    def alive(self) -> bool:
        return self.proc.proc.poll() is None

    def segment(self) -> tuple[torch.Tensor, bytes, str]:
        name = f"e2e_hostile_kv_{uuid.uuid4().hex[:10]}"
        self.segments.append(name)
        tensor, wrapper = share_cpu_tensor(LAYER, torch.float16, name)
        return tensor, wrapper, f"/dev/shm/{name}"


@pytest.fixture
def run(start_server: Callable[..., ServerProcess]) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*flags: str) -> Running:
        suffix = f"e2e_sig_{uuid.uuid4().hex[:10]}"
        proc = start_server("--chunk-size", str(CHUNK), "--shm-name", suffix, *flags)
        line = next(line for line in proc.stderr_lines if READY_RE.search(line))
        zmq_url = ZMQ_RE.search(line)
        assert zmq_url is not None, line
        running = Running(proc, zmq_url.group(1), f"/dev/shm/lmcache_l1_pool_{suffix}")
        started.append(running)
        return running

    yield start
    for running in started:
        for name in running.segments:
            try:
                os.unlink(f"/dev/shm/{name}")
            except FileNotFoundError:
                pass


def fill(layers: list[torch.Tensor], blocks: list[int], seed: int) -> None:
    for i, block in enumerate(blocks):
        for layer in layers:
            layer[:, block] = block_data(seed, i)


def block_data(seed: int, index: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1000 + index)
    return torch.randn((2, LAYER[2], LAYER[3], LAYER[4]), generator=g).half()


def tokens_for(seed: int, chunks: int) -> list[int]:
    return [seed * 7919 + i for i in range(chunks * CHUNK + 1)]


def pool_recoveries(status: dict[str, Any]) -> int:
    return status["storage_manager"]["l1_manager"]["pool"]["truncation_recoveries_total"]


def wait_for_recoveries(server: Running, count: int) -> None:
    def recovered() -> bool:
        assert server.alive(), server.proc.stderr  # a dead server fails at once, not after the timeout
        return pool_recoveries(server.status()) >= count

    poll_until(recovered, timeout=30, interval=0.05, what=f"{count} pool truncation recoveries",
               detail=lambda: server.proc.stderr)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("l2", [None, '{"type": "mock"}'])
def test_a_truncated_pool_fails_the_request_not_the_server(run: Callable[..., Running], l2: str | None) -> None:
    server = run(*(["--l2-adapter", l2] if l2 else []))
    layer, wrapper, _ = server.segment()
    with LMCacheClient(server.zmq_url, timeout=10) as client:
        client.register_kv_cache(1, [wrapper, wrapper], model_name="sig")
        fill([layer], [0, 1], seed=1)
        first = tokens_for(1, 2)
        assert client.store(make_key("sig", first, "w1", end=2 * CHUNK, worker_id=0), 1, [[0, 1]]) is True
        # Another process of the server's uid cuts the L1 segment (its name is public): a store
        # writing into it fails, the server lives on and restores the segment.
        os.truncate(server.pool_path, 4096)
        fill([layer], [2, 3], seed=2)
        second = tokens_for(2, 2)
        assert client.store(make_key("sig", second, "w2", end=2 * CHUNK, worker_id=0), 1, [[2, 3]]) is False
        assert client.noop() == "OK" and server.alive()
        wait_for_recoveries(server, 1)
        assert server.status()["is_healthy"] is True
        assert client.store(make_key("sig", second, "w3", end=2 * CHUNK, worker_id=0), 1, [[2, 3]]) is True
        # A retrieve reading from a cut pool fails the same way.
        client.lookup(make_key("sig", second, "r2"))
        assert client.wait_for_lookup("r2") == 2
        os.truncate(server.pool_path, 4096)
        assert client.retrieve(make_key("sig", second, "r2", end=2 * CHUNK, worker_id=0), 1, [[4, 5]]) is False
        assert client.noop() == "OK" and server.alive()
        wait_for_recoveries(server, 2)
        # Restored: a store and its retrieve work, exactly.
        third = tokens_for(3, 2)
        fill([layer], [8, 9], seed=3)
        assert client.store(make_key("sig", third, "w4", end=2 * CHUNK, worker_id=0), 1, [[8, 9]]) is True
        client.lookup(make_key("sig", third, "r3"))
        assert client.wait_for_lookup("r3") == 2
        layer[:, 6:8] = 0
        assert client.retrieve(make_key("sig", third, "r3", end=2 * CHUNK, worker_id=0), 1, [[6, 7]]) is True
        assert all(torch.equal(layer[:, 6 + i], block_data(3, i)) for i in range(2))
    assert server.proc.stop() == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("l2", [None, '{"type": "mock"}'])
def test_a_truncated_client_segment_fails_the_request_and_drops_its_registration(
    run: Callable[..., Running], l2: str | None
) -> None:
    server = run(*(["--l2-adapter", l2] if l2 else []))
    layer, wrapper, path = server.segment()
    with LMCacheClient(server.zmq_url, timeout=10) as client, LMCacheClient(server.zmq_url, timeout=10) as other:
        client.register_kv_cache(1, [wrapper, wrapper], model_name="sig")
        _, other_wrapper, _ = server.segment()
        other.register_kv_cache(2, [other_wrapper, other_wrapper], model_name="sig")
        fill([layer], [0, 1], seed=3)
        tokens = tokens_for(3, 2)
        assert client.store(make_key("sig", tokens, "w", end=2 * CHUNK, worker_id=0), 1, [[0, 1]]) is True
        del layer  # never touched again in this process: its pages are about to go
        os.truncate(path, 0)
        fresh = tokens_for(4, 2)
        assert client.store(make_key("sig", fresh, "w2", end=2 * CHUNK, worker_id=0), 1, [[2, 3]]) is False
        assert client.noop() == "OK" and server.alive()
        # The registration over the cut segment is gone; another client's work is untouched.
        assert client.store(make_key("sig", fresh, "w3", end=2 * CHUNK, worker_id=0), 1, [[2, 3]]) is False
        assert list(server.status()["workers"]) == ["2"]
        other.lookup(make_key("sig", tokens, "r"))
        assert other.wait_for_lookup("r") == 2
        # Registering a sound segment again works.
        layer2, wrapper2, _ = server.segment()
        client.register_kv_cache(1, [wrapper2, wrapper2], model_name="sig")
        fill([layer2], [2, 3], seed=4)
        assert client.store(make_key("sig", fresh, "w4", end=2 * CHUNK, worker_id=0), 1, [[2, 3]]) is True
    assert server.proc.stop() == 0


@pytest.mark.timeout(120)
@pytest.mark.skipif(not native_guard(), reason="faults outside a request (L2 write-back) need the native SIGBUS guard")
def test_a_truncated_pool_under_the_l2_write_back_is_recovered(run: Callable[..., Running]) -> None:
    server = run("--l2-adapter", '{"type": "mock"}')
    with LMCacheClient(server.zmq_url, timeout=10) as client:
        client.register_engine_driven(1, model_name="wb", num_layers=2, hidden_dim_size=64)
        os.truncate(server.pool_path, 4096)  # (our own mapping of the pool is never touched again)
        tokens = tokens_for(5, 4)
        key = key_to_wire(make_key("wb", tokens, "w", end=4 * CHUNK, worker_id=0))
        reply = client.call(RequestType.PREPARE_STORE, key, 1)
        assert len(reply["context"]["slots"]) == 4
        # Committed unwritten: the write-back to L2 reads the cut pool on its own thread.
        client.call(RequestType.COMMIT_STORE, key, 1, b"")
        wait_for_recoveries(server, 1)
        assert client.noop() == "OK" and server.alive()
    assert server.proc.stop() == 0


# --------------------------------------------------------------------------- concurrency

ED_LAYERS, ED_HIDDEN, PROMPT_CHUNKS, SEEDS = 2, 64, 6, 8
RUN_SECONDS = 12.0


def ed_chunk(seed: int, index: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1000 + index)
    return torch.randn((2, ED_LAYERS, CHUNK, ED_HIDDEN), generator=g).half()


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.checked = 0
        self.wrong: list[str] = []
        self.errors: list[str] = []

    def check(self, who: str, got: torch.Tensor, want: torch.Tensor) -> None:
        with self.lock:
            self.checked += 1
            if not torch.equal(got, want):
                self.wrong.append(who)


def engine_loop(
    client: LMCacheClient, model: str, name: str, stop: threading.Event,
    retrieve: Callable[[int, str, int], None], store: Callable[[int, list[int], str], None],
) -> None:
    """Like an engine serving random prompts (some shared with other clients): look up,
    retrieve the hits (checked by `retrieve`), store the misses, end the session."""
    rng = random.Random(f"{name}-{threading.get_ident()}")
    n = 0
    while not stop.is_set():
        n += 1
        seed = rng.randrange(SEEDS)
        tokens = [seed * 7919 + i for i in range(PROMPT_CHUNKS * CHUNK + 1)]
        rid = f"{name}-{threading.get_ident()}-{n}"
        client.lookup(make_key(model, tokens, rid))
        hit = client.wait_for_lookup(rid, timeout=10)
        if hit:
            retrieve(seed, rid, hit)
        if hit < PROMPT_CHUNKS:
            store(seed, tokens, rid)
        client.end_session(rid)


def engine_driven_client(url: str, iid: int, stop: threading.Event, tally: Tally, expected: dict[tuple[int, int], torch.Tensor]) -> None:
    with LMCacheClient(url, timeout=20) as client:
        ctx = client.register_engine_driven(iid, model_name="race", num_layers=ED_LAYERS, hidden_dim_size=ED_HIDDEN)

        def retrieve(seed: int, rid: str, hit: int) -> None:
            tokens = [seed * 7919 + i for i in range(PROMPT_CHUNKS * CHUNK + 1)]
            got = client.retrieve_engine_driven(ctx, make_key("race", tokens, rid, end=hit * CHUNK, worker_id=0))
            for i, chunk in enumerate(got or []):
                tally.check(f"ed{iid} seed {seed} chunk {i}", chunk, expected[(seed, i)])

        def store(seed: int, tokens: list[int], rid: str) -> None:
            def write(index: int, slot: torch.Tensor) -> None:
                # An engine copies from its GPU between PREPARE and COMMIT: give other writers
                # of the same key time to try their luck meanwhile.
                time.sleep(0.005)
                slot.copy_(expected[(seed, index)].view(-1).view(torch.uint8))

            client.store_engine_driven_with(ctx, make_key("race", tokens, rid, end=PROMPT_CHUNKS * CHUNK, worker_id=0), write)

        engine_loop(client, "race", f"ed{iid}", stop, retrieve, store)


def server_driven_client(run: Running, iid: int, stop: threading.Event, tally: Tally) -> None:
    layers, wrappers = [], []
    for _ in range(2):
        tensor, wrapper, _ = run.segment()
        layers.append(tensor)
        wrappers.append(wrapper)
    src, dst = list(range(PROMPT_CHUNKS)), list(range(32, 32 + PROMPT_CHUNKS))
    with LMCacheClient(run.zmq_url, timeout=20) as client:
        client.register_kv_cache(iid, wrappers, model_name="race-sd")

        def retrieve(seed: int, rid: str, hit: int) -> None:
            tokens = [seed * 7919 + i for i in range(PROMPT_CHUNKS * CHUNK + 1)]
            for layer in layers:
                layer[:, dst] = 0
            if client.retrieve(make_key("race-sd", tokens, rid, end=hit * CHUNK, worker_id=0), iid, [dst[:hit]]):
                for i in range(hit):
                    for layer in layers:
                        tally.check(f"sd{iid} seed {seed} chunk {i}", layer[:, dst[i]], block_data(seed, i))

        def store(seed: int, tokens: list[int], rid: str) -> None:
            fill(layers, src, seed)
            client.store(make_key("race-sd", tokens, rid, end=PROMPT_CHUNKS * CHUNK, worker_id=0), iid, [src])

        engine_loop(client, "race-sd", f"sd{iid}", stop, retrieve, store)


def guarded(tally: Tally, fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        with tally.lock:
            tally.errors.append(f"{fn.__name__}: {exc!r}")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_clients_racing_clear_never_read_a_wrong_byte(run: Callable[..., Running]) -> None:
    server = run("--l1-size-gb", "0.0078125")  # 8 MiB: 1024 chunks of 8 KiB, so eviction runs too
    expected = {(s, i): ed_chunk(s, i) for s in range(SEEDS) for i in range(PROMPT_CHUNKS)}
    stop, tally = threading.Event(), Tally()
    threads = [
        threading.Thread(target=guarded, args=(tally, engine_driven_client, server.zmq_url, iid, stop, tally, expected))
        for iid in (0, 0, 0, 0, 0, 0, 1, 2)  # six sharing instance id 0, like several `lmcache bench` runs
    ]
    threads += [threading.Thread(target=guarded, args=(tally, server_driven_client, server, iid, stop, tally))
                for iid in (0, 7)]

    def clear_over_zmq() -> None:
        with LMCacheClient(server.zmq_url, timeout=20) as client:
            while not stop.wait(0.05):
                client.clear()

    def clear_over_http() -> None:
        while not stop.wait(0.07):
            req = urllib.request.Request(server.proc.url + "/clear-cache", method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200

    threads += [threading.Thread(target=guarded, args=(tally, f)) for f in (clear_over_zmq, clear_over_http)]
    for t in threads:
        t.start()
    time.sleep(RUN_SECONDS)
    stop.set()
    for t in threads:
        t.join(30)
    assert not [t for t in threads if t.is_alive()]
    assert tally.errors == []
    assert tally.wrong == [], f"{len(tally.wrong)} of {tally.checked} chunks came back wrong: {tally.wrong[:10]}"
    assert tally.checked >= 200, tally.checked
    assert server.alive() and server.status()["is_healthy"] is True
    assert server.proc.stop() == 0
