"""Server-driven STORE/RETRIEVE over an engine's own KV tensors, against the real server process,
for LMCache 0.5.0's clients (pickled tensor wrappers) and 0.5.6's (msgpack tensor descriptors):
on the GPU (CUDA IPC memory and interprocess events, what vLLM on a GPU sends) and over /dev/shm
(what a CPU engine sends). The CUDA cases run where a GPU is present; the /dev/shm cases run
everywhere and hold the same flow."""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from serverproc import READY_RE, ServerProcess

from lmcache_core.testing import poll_until
from lmcache_frontends.client import (
    CPU_STUB_EVENT,
    LMCacheClient,
    Transfer,
    make_key,
    record_cuda_event,
    share_cpu_tensor,
    share_cuda_tensor,
    wait_cuda_event,
)
from lmcache_frontends.testing import Client056, cpu_shm_descriptor, cuda_descriptor, pack

pytestmark = pytest.mark.e2e

ZMQ_RE = re.compile(r"zmq (tcp://\S+)")
CHUNK, BLOCK = 64, 16  # 4 blocks per chunk
NUM_BLOCKS, HEADS, HEAD_SIZE, NUM_LAYERS = 64, 4, 64, 4
LAYER = (2, NUM_BLOCKS, BLOCK, HEADS, HEAD_SIZE)  # vLLM's flash-attention layout (NHD), fp16: 1 MiB
HND_LAYER = (2, NUM_BLOCKS, HEADS, BLOCK, HEAD_SIZE)  # heads before tokens (`layout_hints.kv_layout`)
# (name, per-layer shape, dtype, layout hint): the gather/scatter paths differ for HND.
FORMATS = {"NHD-fp16": (LAYER, torch.float16, "NHD"), "HND-bf16": (HND_LAYER, torch.bfloat16, "HND")}
CHUNKS = 3
IID = 5

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]
VERSIONS = ["0.5.0", "0.5.6"]


class Engine:
    """One engine worker: its KV layers on `device`, shared with the server over `version`'s
    wire (0.5.0: pickled wrappers; 0.5.6: descriptors), and the server-driven calls vLLM makes."""

    def __init__(self, zmq_url: str, version: str, device: str, fmt: str = "NHD-fp16") -> None:
        self.version, self.device = version, device
        self.shape, self.dtype, self.kv_layout = FORMATS[fmt]
        self.segments: list[str] = []
        self.cpu_handles: list[bytes] = []
        self.layers = self._allocate()
        if version == "0.5.0":
            self.c050: LMCacheClient | None = LMCacheClient(zmq_url, timeout=30)
            self.c056: Client056 | None = None
        else:
            self.c050, self.c056 = None, Client056(zmq_url)

    def _allocate(self) -> list[torch.Tensor]:
        if self.device == "cuda":
            # Layers 0 and 1 have storages of their own; 2 and 3 are views into one allocation
            # (non-zero storage offset, one IPC handle opened twice by the server).
            own = [torch.zeros(self.shape, dtype=self.dtype, device="cuda") for _ in range(2)]
            joint = torch.zeros((2, *self.shape), dtype=self.dtype, device="cuda")
            return [*own, joint[0], joint[1]]
        out = []
        for _ in range(NUM_LAYERS):
            name = f"e2e_gpu_kv_{uuid.uuid4().hex[:10]}"
            self.segments.append(name)
            tensor, handle = share_cpu_tensor(self.shape, self.dtype, name)
            out.append(tensor)
            self.cpu_handles.append(handle)
        return out

    def register(self) -> None:
        if self.c050 is not None:
            handles = [share_cuda_tensor(t) for t in self.layers] if self.device == "cuda" else self.cpu_handles
            self.c050.register_kv_cache(IID, handles, model_name="gpu-e2e", layout_hints={"kv_layout": self.kv_layout})
            return
        assert self.c056 is not None
        if self.device == "cuda":
            descriptors = [cuda_descriptor(t) for t in self.layers]
        else:
            nbytes = self.layers[0].numel() * self.layers[0].element_size()
            dtype = str(self.dtype).removeprefix("torch.")
            descriptors = [cpu_shm_descriptor("/" + name, nbytes, list(self.shape), dtype) for name in self.segments]
        groups = [{"engine_group_id": 0, "layer_indices": list(range(NUM_LAYERS)), "tokens_per_block": BLOCK,
                   "sw_size_tokens": -1, "extra_object_group_tag": 0, "recurrent_state": False}]
        assert self.c056.value(1, pack(IID), pack(descriptors), pack("gpu-e2e"), pack(1), pack("vllm"),
                               pack({"kv_layout": self.kv_layout}),
                               pack(groups)) is None

    def event(self) -> Any:
        """What an engine sends with a transfer: an event after its own work on the blocks (kept
        alive by the caller until the reply)."""
        return record_cuda_event() if self.device == "cuda" else CPU_STUB_EVENT

    @staticmethod
    def handle(event: Any) -> bytes:
        return event if isinstance(event, bytes) else bytes(event.ipc_handle())

    def wait(self, transfer: Transfer) -> None:
        """Wait for the server's copies (its event) before touching the blocks again."""
        if self.device == "cuda":
            assert len(transfer.event) == 64
            wait_cuda_event(transfer.event)
        else:
            assert transfer.event == CPU_STUB_EVENT

    def store(self, tokens: list[int], rid: str, blocks: list[int]) -> Transfer:
        end = len(blocks) // (CHUNK // BLOCK) * CHUNK
        if self.c050 is not None:
            return self.c050.store_transfer(make_key("gpu-e2e", tokens, rid, end=end, worker_id=0), IID, [blocks],
                                            self.event())
        assert self.c056 is not None
        mine = self.event()
        event, ok = self.c056.value(6, self.c056.key(tokens, rid, end=end, worker_id=0, model="gpu-e2e"), pack(IID),
                                    pack([blocks]), pack(self.handle(mine)))
        return Transfer(event, ok)

    def lookup(self, tokens: list[int], rid: str) -> int:
        """Chunks the server holds for `tokens` (and holds for this request's retrieve)."""
        if self.c050 is not None:
            self.c050.lookup(make_key("gpu-e2e", tokens, rid, end=len(tokens) // CHUNK * CHUNK))
            return self.c050.wait_for_lookup(rid, timeout=30)
        assert self.c056 is not None
        c = self.c056
        c.value(8, c.key(tokens, rid, model="gpu-e2e"), pack(1))

        def answered() -> list[int] | None:
            hits = c.value(9, pack(rid))  # nil while the lookup runs; answered once
            return None if hits is None else [hits]

        return poll_until(answered, timeout=30, what=f"lookup {rid}")[0]

    def retrieve(self, tokens: list[int], rid: str, blocks: list[int], skip: int = 0) -> Transfer:
        end = len(blocks) // (CHUNK // BLOCK) * CHUNK
        if self.c050 is not None:
            return self.c050.retrieve_transfer(make_key("gpu-e2e", tokens, rid, end=end, worker_id=0), IID,
                                               [blocks], skip, self.event())
        assert self.c056 is not None
        mine = self.event()
        event, ok = self.c056.value(7, self.c056.key(tokens, rid, end=end, worker_id=0, model="gpu-e2e"),
                                    pack(IID), pack([blocks]), pack(self.handle(mine)), pack(skip))
        return Transfer(event, ok)

    def end(self, rid: str) -> None:
        if self.c050 is not None:
            self.c050.end_session(rid)
        else:
            assert self.c056 is not None
            self.c056.value(13, pack(rid))

    def close(self) -> None:
        if self.c050 is not None:
            self.c050.unregister_kv_cache(IID)
            self.c050.close()
        if self.c056 is not None:
            self.c056.value(2, pack(IID))
            self.c056.close()
        self.layers.clear()
        for name in self.segments:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/{name}")


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> tuple[ServerProcess, str]:
    proc = start_server("--chunk-size", str(CHUNK), "--l1-size-gb", "0.0625",
                        "--shm-name", f"e2e_gpu_{uuid.uuid4().hex[:10]}")
    line = next(line for line in proc.stderr_lines if READY_RE.search(line))
    found = ZMQ_RE.search(line)
    assert found is not None, line
    return proc, found.group(1)


@pytest.fixture
def engines(server: tuple[ServerProcess, str]) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(version: str, device: str, fmt: str = "NHD-fp16") -> Engine:
        engine = Engine(server[1], version, device, fmt)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def chunk_data(seed: int, blocks: int, engine: Engine) -> torch.Tensor:
    """Random KV for `blocks` blocks of every layer of `engine`: (layers, 2, blocks, ...)."""
    g = torch.Generator().manual_seed(seed)
    shape = (NUM_LAYERS, 2, blocks, *engine.shape[2:])
    return torch.randn(shape, generator=g).to(engine.dtype).to(engine.device)


def write_blocks(layers: list[torch.Tensor], blocks: list[int], data: torch.Tensor) -> None:
    index = torch.as_tensor(blocks, device=layers[0].device)
    for layer, values in zip(layers, data, strict=True):
        layer.index_copy_(1, index, values)


def read_blocks(layers: list[torch.Tensor], blocks: list[int]) -> torch.Tensor:
    index = torch.as_tensor(blocks, device=layers[0].device)
    return torch.stack([layer.index_select(1, index) for layer in layers])


def status(proc: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(proc.url + "/status", timeout=10) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("version", VERSIONS)
def test_store_then_retrieve_moves_every_byte(
    server: tuple[ServerProcess, str], engines: Callable[..., Engine], version: str, device: str, fmt: str
) -> None:
    proc, _ = server
    engine = engines(version, device, fmt)
    engine.register()
    tokens = [31 + (version == "0.5.6")] + list(range(1000, 1000 + CHUNKS * CHUNK))
    nblocks = CHUNKS * CHUNK // BLOCK
    # Written in scattered blocks (the gather's indexed path), after a long GPU kernel on the same
    # stream: the STORE goes out before that work finished, so the server must wait on the event.
    src = [7, 3, 12, 0, 30, 31, 32, 33, 20, 9, 41, 40]
    assert len(src) == nblocks
    data = chunk_data(1, nblocks, engine)
    if device == "cuda":
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time ahead of the writes
    write_blocks(engine.layers, src, data)
    stored = engine.store(tokens, "w", src)
    assert stored.ok
    engine.wait(stored)
    write_blocks(engine.layers, src, torch.zeros_like(data))  # the engine reuses its blocks
    engine.end("w")

    assert engine.lookup(tokens, "r") == CHUNKS
    # Into consecutive blocks (the scatter's plain copies) ...
    dst = list(range(44, 44 + nblocks))
    got = engine.retrieve(tokens, "r", dst)
    assert got.ok
    engine.wait(got)
    assert torch.equal(read_blocks(engine.layers, dst), data)
    engine.end("r")

    # ... and into fragmented ones, skipping the first chunk (vLLM had it already).
    assert engine.lookup(tokens, "r2") == CHUNKS
    frag = [1, 5, 2, 6, 10, 8, 14, 11, 13, 15, 17, 16]
    write_blocks(engine.layers, frag, torch.zeros_like(data))
    got = engine.retrieve(tokens, "r2", frag, skip=CHUNK)
    assert got.ok
    engine.wait(got)
    back = read_blocks(engine.layers, frag)
    per_chunk = CHUNK // BLOCK
    assert bool((back[:, :, :per_chunk] == 0).all())
    assert torch.equal(back[:, :, per_chunk:], data[:, :, per_chunk:])
    engine.end("r2")

    # Blocks beyond the tensors are refused, the server stays up and says where the KV lives.
    assert engine.lookup(tokens, "r3") == CHUNKS
    assert not engine.retrieve(tokens, "r3", [NUM_BLOCKS + i for i in range(nblocks)]).ok
    engine.end("r3")
    now = status(proc)
    assert ("cuda:0" in json.dumps(now)) == (device == "cuda")
    # With CUDA in the server, its L1 is page-locked (GPU copies run at full speed, no bounce).
    assert now["storage_manager"]["l1_manager"]["pool"]["pinned"] is torch.cuda.is_available()
    assert proc.proc.poll() is None
    assert not [line for line in proc.stderr_lines if " ERROR " in line or "Traceback" in line], proc.stderr


@pytest.mark.timeout(180)
@pytest.mark.parametrize("device", DEVICES)
def test_forged_handles_fail_their_request_not_the_server(
    server: tuple[ServerProcess, str], engines: Callable[..., Engine], device: str
) -> None:
    """A forged tensor handle fails its registration, a forged event handle its transfer; the
    server (on a GPU: its CUDA context) goes on serving the honest engine exactly."""
    import msgpack

    proc, url = server
    forger = engines("0.5.6", device)
    body = msgpack.unpackb((
        cuda_descriptor(forger.layers[0]) if device == "cuda"
        else cpu_shm_descriptor("/" + forger.segments[0], 1, list(LAYER))  # a view beyond its segment
    ).data)
    if device == "cuda":
        body["handle"][1] = os.urandom(len(body["handle"][1]))  # no such CUDA allocation
    forged = msgpack.ExtType(1, pack(body))
    assert forger.c056 is not None
    with pytest.raises(AssertionError, match="error reply"):
        forger.c056.value(1, pack(IID), pack([forged]), pack("gpu-e2e"), pack(1), pack("vllm"), pack({}), pack([]))

    honest = engines("0.5.0", device)
    honest.register()
    assert honest.c050 is not None
    tokens = [77] + list(range(3000, 3000 + CHUNK))
    blocks = [0, 1, 2, 3]
    data = chunk_data(2, len(blocks), honest)
    write_blocks(honest.layers, blocks, data)
    key = make_key("gpu-e2e", tokens, "w", end=CHUNK, worker_id=0)
    if device == "cuda":
        # 64 bytes that name no event: the server cannot wait on it, so it does not store.
        assert not honest.c050.store_transfer(key, IID, [blocks], os.urandom(64)).ok
        assert honest.lookup(tokens, "r0") == 0
        honest.end("r0")
    stored = honest.c050.store_transfer(key, IID, [blocks], honest.event())
    assert stored.ok
    honest.wait(stored)
    assert honest.lookup(tokens, "r") == 1
    got = honest.retrieve(tokens, "r", [8, 9, 10, 11])
    assert got.ok
    honest.wait(got)
    assert torch.equal(read_blocks(honest.layers, [8, 9, 10, 11]), data)
    assert proc.proc.poll() is None
    assert not [line for line in proc.stderr_lines if "Traceback" in line], proc.stderr
