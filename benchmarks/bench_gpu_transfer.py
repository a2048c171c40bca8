"""GPU data-path benchmark: server-driven STORE/RETRIEVE between an engine's KV cache on the GPU
(shared with the server over CUDA IPC, as vLLM on a GPU shares it) and our server's L1, against
the same copies done by the engine itself into a pinned host buffer (same run, alternated).

    python benchmarks/bench_gpu_transfer.py [--chunks 16] [--reps 7] [--layers 32]

The server is a real `lmcache-server` process; this process is the engine (our 0.5.0 client,
fp16 KV in vLLM's flash-attention layout, 32 layers x 8 KV heads x 128, 256-token chunks of
32 MiB). Each STORE/RETRIEVE moves `--chunks` chunks in one request, with the interprocess
events an engine sends and waits on; every RETRIEVE is checked byte for byte on the GPU.
Baselines, same bytes, same block gather/scatter, in this process: device -> pinned host and
back (`copy_(non_blocking=True)`, what the server does into its pinned L1), and the same into
pageable memory (what an L1 that could not be pinned would give). Figures are medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data_path import CHUNK, our_server  # noqa: E402

from lmcache_frontends.client import (
    LMCacheClient,
    make_key,
    record_cuda_event,
    share_cuda_tensor,
    wait_cuda_event,
)

BS, NH, HS = 16, 8, 128


def timed(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=16, help="256-token chunks per STORE/RETRIEVE request")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--l1-gb", type=float, default=2.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_transfer: needs a CUDA GPU")
    per_chunk = CHUNK // BS
    nb = 2 * args.chunks * per_chunk  # store from the first half, retrieve into the second
    layers = [torch.randn((2, nb, BS, NH, HS), device="cuda").half() for _ in range(args.layers)]
    src = list(range(args.chunks * per_chunk))
    dst = list(range(args.chunks * per_chunk, nb))
    src_index = torch.as_tensor(src, device="cuda")
    dst_index = torch.as_tensor(dst, device="cuda")
    nbytes = args.layers * 2 * len(src) * BS * NH * HS * 2
    print(f"{torch.cuda.get_device_name()}; {args.layers} layers, {args.chunks} chunks of {CHUNK} tokens "
          f"= {nbytes / 2**20:.0f} MiB per request, {args.reps} reps")

    pinned = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
    pageable = torch.empty(nbytes, dtype=torch.uint8)
    per_layer = nbytes // args.layers

    def d2h(host: torch.Tensor) -> None:
        for i, layer in enumerate(layers):
            out = host[i * per_layer:(i + 1) * per_layer].view(torch.float16).view(2, len(src), BS, NH, HS)
            out.copy_(layer.index_select(1, src_index), non_blocking=True)

    def h2d(host: torch.Tensor) -> None:
        for i, layer in enumerate(layers):
            part = host[i * per_layer:(i + 1) * per_layer].view(torch.float16).view(2, len(src), BS, NH, HS)
            layer.index_copy_(1, dst_index, part.to("cuda", non_blocking=True))

    samples: dict[str, list[float]] = {k: [] for k in (
        "store", "retrieve", "d2h pinned", "h2d pinned", "d2h pageable", "h2d pageable")}
    with our_server("xxh3", args.l1_gb, 0, "--chunk-size", str(CHUNK)) as server, \
            LMCacheClient(server.url, timeout=120) as client:
        client.register_kv_cache(0, [share_cuda_tensor(t) for t in layers], model_name="gpu-bench")
        expected = torch.stack([t.index_select(1, src_index) for t in layers])
        for rep in range(args.reps + 1):  # the first round warms up and is not counted
            tokens = [rep + 1] + [9906] * (args.chunks * CHUNK)
            client.clear()
            for t in layers:
                t.index_fill_(1, dst_index, 0)
            key = make_key("gpu-bench", tokens, f"s{rep}", end=args.chunks * CHUNK, worker_id=0)

            def store(key: object = key) -> None:
                reply = client.store_transfer(key, 0, [src], record_cuda_event())  # type: ignore[arg-type]
                assert reply.ok, "STORE failed"
                wait_cuda_event(reply.event)

            t_store = timed(store)
            client.lookup(make_key("gpu-bench", tokens, f"r{rep}", end=args.chunks * CHUNK))
            hits = client.wait_for_lookup(f"r{rep}", timeout=60)
            assert hits == args.chunks, f"{hits} of {args.chunks} chunks found after STORE"
            rkey = make_key("gpu-bench", tokens, f"r{rep}", end=args.chunks * CHUNK, worker_id=0)

            def retrieve(rkey: object = rkey) -> None:
                reply = client.retrieve_transfer(rkey, 0, [dst], 0, record_cuda_event())  # type: ignore[arg-type]
                assert reply.ok, "RETRIEVE failed"
                wait_cuda_event(reply.event)

            t_retrieve = timed(retrieve)
            got = torch.stack([t.index_select(1, dst_index) for t in layers])
            assert torch.equal(got, expected), "retrieved KV differs from the stored KV"
            client.end_session(f"s{rep}")
            client.end_session(f"r{rep}")
            base = {name: timed(lambda f=f, h=h: f(h)) for name, f, h in (
                ("d2h pinned", d2h, pinned), ("h2d pinned", h2d, pinned),
                ("d2h pageable", d2h, pageable), ("h2d pageable", h2d, pageable))}
            if rep:
                samples["store"].append(t_store)
                samples["retrieve"].append(t_retrieve)
                for name, value in base.items():
                    samples[name].append(value)
        client.unregister_kv_cache(0)

    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"{'':14} {'ms':>8} {'GB/s':>7}")
    for name, value in med.items():
        print(f"{name:14} {value * 1e3:8.2f} {nbytes / value / 1e9:7.1f}")
    print(f"STORE    / engine's own d2h into pinned memory: {med['d2h pinned'] / med['store']:.2f}x the speed")
    print(f"RETRIEVE / engine's own h2d from pinned memory: {med['h2d pinned'] / med['retrieve']:.2f}x the speed")


if __name__ == "__main__":
    main()
