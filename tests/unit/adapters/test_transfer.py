"""KV transfer: layout detection, gather/scatter round trips, the allow-list unpickler, checksums."""

from __future__ import annotations

import hashlib
import os
import pickle
import time
import uuid

import pytest
import torch

from lmcache_adapters.transfer.copy_pool import CopyPool
from lmcache_adapters.transfer.layout import (
    KVCacheLayout,
    KVFormat,
    UnsupportedLayoutError,
    detect_format,
    parse_block_ids,
)
from lmcache_adapters.transfer.tensors import CpuShmTensorWrapper
from lmcache_adapters.transfer.unpickler import (
    UnpicklingRejectedError,
    dumps_cpu_tensors,
    load_cpu_tensors,
    load_wrapper,
    restricted_loads,
)
from lmcache_frontends.client import share_cpu_tensor

C, BS, NB, NH, HS, L = 32, 8, 24, 2, 4, 3


def layers(shape: tuple[int, ...], dtype: torch.dtype = torch.float16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=g).to(dtype) for _ in range(L)]


@pytest.mark.parametrize(
    ("shape", "hint", "fmt"),
    [
        ((2, NB, BS, NH, HS), "NHD", KVFormat.TWO_NB_BS_NH_HS),
        ((2, NB, NH, BS, HS), "HND", KVFormat.TWO_NB_NH_BS_HS),
        ((NB, 2, BS, NH, HS), "NHD", KVFormat.NB_TWO_BS_NH_HS),
        ((NB, 2, NH, BS, HS), "HND", KVFormat.NB_TWO_NH_BS_HS),
        ((NB, BS, HS), "NHD", KVFormat.NB_BS_HS),
    ],
)
def test_gather_scatter_round_trip_every_format(shape: tuple[int, ...], hint: str, fmt: KVFormat) -> None:
    src = layers(shape)
    assert detect_format(src[0], hint) is fmt
    layout = KVCacheLayout(src, C, layout_hints={"kv_layout": hint})
    bpc = C // BS
    ids = [5, 9, 1, 0, 17, 3, 22, 8]  # two chunks of 4 scattered blocks
    objs = [torch.zeros(layout.object_size, dtype=torch.uint8) for _ in range(2)]
    layout.gather([ids], [0, 1], objs)
    dst = [torch.zeros_like(t) for t in src]
    back = KVCacheLayout(dst, C, layout_hints={"kv_layout": hint})
    back.scatter([ids], [0, 1], objs)
    axis = 0 if fmt in (KVFormat.NB_TWO_BS_NH_HS, KVFormat.NB_TWO_NH_BS_HS, KVFormat.NB_BS_HS) else 1
    idx = torch.tensor(ids)
    for s, d in zip(src, dst, strict=True):
        assert torch.equal(s.index_select(axis, idx), d.index_select(axis, idx))
    untouched = torch.tensor([i for i in range(NB) if i not in ids])
    assert all(int(d.index_select(axis, untouched).abs().sum()) == 0 for d in dst)
    assert len(ids) == 2 * bpc


def test_object_is_kv_2ltd_for_nhd() -> None:
    src = layers((2, NB, BS, NH, HS))
    layout = KVCacheLayout(src, C)
    ids = list(range(4, 8))
    obj = torch.zeros(layout.object_size, dtype=torch.uint8)
    layout.gather([ids], [0], [obj])
    view = obj.view(torch.float16).view(2, L, C, NH * HS)
    # element [k, l, t, h*HS+d] is token t (block t//BS, slot t%BS), head h, dim d
    k, layer, t, h, d = 1, 2, 13, 1, 3
    assert view[k, layer, t, h * HS + d] == src[layer][k, ids[t // BS], t % BS, h, d]


def test_scatter_skips_leading_blocks() -> None:
    src = layers((2, NB, BS, NH, HS))
    layout = KVCacheLayout(src, C)
    ids = list(range(8))
    objs = [torch.zeros(layout.object_size, dtype=torch.uint8) for _ in range(2)]
    layout.gather([ids], [0, 1], objs)
    dst = [torch.zeros_like(t) for t in src]
    KVCacheLayout(dst, C).scatter([ids], [0, 1], objs, skip_tokens=5 * BS + 3)
    for s, d in zip(src, dst, strict=True):
        assert int(d[:, :5].abs().sum()) == 0
        assert torch.equal(d[:, 5:8], s[:, 5:8])


@pytest.mark.parametrize(
    ("ids", "ok"),
    [
        (list(range(8)), True),  # two chunks of 4 blocks
        (list(range(8)) + [NB + 5], True),  # beyond the chunks asked for: not used, not checked
        (list(range(7)), False),  # too few
        ([0, 1, 2, 3, 4, 5, 6, NB], False),  # one past the last block
        ([0, 1, 2, 3, -1, 5, 6, 7], False),  # negative (torch would count from the end)
    ],
)
def test_block_ids_are_checked_against_the_tensors_before_any_copy(ids: list[int], ok: bool) -> None:
    # On a GPU an out-of-range index is a device-side assert that poisons the server's CUDA
    # context for every client: refused before any copy instead.
    layout = KVCacheLayout(layers((2, NB, BS, NH, HS)), C)
    assert layout.check_block_ids([ids], 2) is ok
    assert layout.check_block_ids([ids, ids], 2) is False  # one list per group


def test_unsupported_shapes_are_rejected() -> None:
    with pytest.raises(UnsupportedLayoutError):
        KVCacheLayout([torch.zeros(NB, NH, BS, 2 * HS)], C)
    with pytest.raises(UnsupportedLayoutError):
        KVCacheLayout([torch.zeros(2, NB, 24, NH, HS)], C)  # chunk not a multiple of the block


def test_checksums_match_md5_of_selected_blocks() -> None:
    src = layers((2, NB, BS, NH, HS), torch.bfloat16)
    layout = KVCacheLayout(src, C)
    ids, ranges = parse_block_ids("[0,5]")
    assert ids == list(range(6)) and ranges == [[0, 5]]
    sums = layout.checksums(ids, 4)
    expect0 = hashlib.md5()
    for t in src:
        expect0.update(t[:, 0:4].float().contiguous().numpy().tobytes())
    assert len(sums) == 2 and sums[0] == expect0.hexdigest()
    lw = layout.checksums(ids, 4, layerwise=True)
    assert set(lw) == {"layer_0", "layer_1", "layer_2"}
    assert lw["layer_0"][1] == hashlib.md5(src[0][:, 4:6].float().contiguous().numpy().tobytes()).hexdigest()


def test_parse_block_ids_mixed_and_malformed() -> None:
    assert parse_block_ids("0,[2,5],8")[0] == [0, 2, 3, 4, 5, 8]
    for bad in ("", "a", "[3,1]", "[1,2,3]", "-1", "true"):
        with pytest.raises(ValueError):
            parse_block_ids(bad)


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned",))


def test_unpickler_rejects_everything_not_allowed() -> None:
    with pytest.raises(UnpicklingRejectedError):
        restricted_loads(pickle.dumps(Evil()))
    with pytest.raises(UnpicklingRejectedError):
        restricted_loads(pickle.dumps(torch.zeros(2)))  # tensors only in pickle-mode payloads
    with pytest.raises(UnpicklingRejectedError):
        load_wrapper(pickle.dumps({"shm_name": "x"}))


def test_cpu_shm_wrapper_round_trip_is_zero_copy() -> None:
    name = f"lmcache_test_{uuid.uuid4().hex[:8]}"
    try:
        tensor, body = share_cpu_tensor((2, NB, BS, NH, HS), torch.float16, name)
        wrapper = load_wrapper(body)
        assert isinstance(wrapper, CpuShmTensorWrapper)
        mapped = wrapper.to_tensor()
        tensor[1, 3] = 7.0
        assert float(mapped[1, 3, 0, 0, 0]) == 7.0
        mapped[0, 0] = 2.0
        assert float(tensor[0, 0, 1, 1, 1]) == 2.0
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_pickle_mode_tensors_round_trip() -> None:
    tensors = [torch.arange(12, dtype=torch.float16).view(3, 4), torch.ones(5, dtype=torch.bfloat16)]
    back = load_cpu_tensors(dumps_cpu_tensors(tensors))
    assert all(torch.equal(a, b) for a, b in zip(tensors, back, strict=True))


@pytest.mark.parametrize("hint", ["NHD", "HND"])
@pytest.mark.parametrize(
    "ids",
    [
        list(range(3, 35)),  # one run per chunk: plain copies
        [*range(20, 28), *range(0, 8), *range(30, 46)],  # two runs in chunk 0, one in chunk 1
        [31, 2, 17, 5, 9, 36, 0, 22, 13, 27, 4, 11, 38, 7, 19, 1, *range(40, 56)],  # > 4 runs: indexed copy
    ],
)
@pytest.mark.parametrize("skip", [0, 2 * 5 + 1, 2 * 20])
def test_scatter_of_runs_and_fragments_matches_the_blocks(hint: str, ids: list[int], skip: int) -> None:
    bs, nb, chunk = 2, 64, 32  # 16 blocks per chunk
    shape = (2, nb, bs, NH, HS) if hint == "NHD" else (2, nb, NH, bs, HS)
    src = layers(shape)
    layout = KVCacheLayout(src, chunk, layout_hints={"kv_layout": hint})
    objs = [torch.zeros(layout.object_size, dtype=torch.uint8) for _ in range(2)]
    layout.gather([ids], [0, 1], objs)
    dst = [torch.zeros_like(t) for t in src]
    KVCacheLayout(dst, chunk, layout_hints={"kv_layout": hint}).scatter([ids], [0, 1], objs, skip_tokens=skip)
    written = ids[skip // bs :]
    left = [i for i in range(nb) if i not in written]
    for s, d in zip(src, dst, strict=True):
        assert torch.equal(d[:, written], s[:, written])
        assert int(d[:, left].abs().sum()) == 0


def expected_object(src: list[torch.Tensor], ids: list[int], hnd: bool, chunk: int, bs: int) -> torch.Tensor:
    """KV_2LTD written out block by block (the slow, obvious way): [kv, layer, token, NH*HS]."""
    nh = src[0].shape[2] if hnd else src[0].shape[3]
    out = torch.zeros(2, len(src), chunk, nh * HS, dtype=src[0].dtype)
    for layer, t in enumerate(src):
        for j, block in enumerate(ids):
            blk = t[:, block]  # [kv, BS, NH, HS] or [kv, NH, BS, HS]
            if hnd:
                blk = blk.transpose(1, 2)
            out[:, layer, j * bs : (j + 1) * bs] = blk.reshape(2, bs, nh * HS)
    return out.view(-1).view(torch.uint8)


@pytest.mark.parametrize("hint", ["NHD", "HND"])
@pytest.mark.parametrize(
    "ids",
    [
        list(range(3, 35)),  # one run per chunk: strided copies
        [*range(20, 28), *range(0, 8), *range(30, 46)],  # two runs in chunk 0, one in chunk 1
        [31, 2, 17, 5, 9, 36, 0, 22, 13, 27, 4, 11, 38, 7, 19, 1, *range(40, 56)],  # > 4 runs: index_select
    ],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_gathered_objects_match_block_by_block_copies(hint: str, ids: list[int], threads: int) -> None:
    bs, nb, chunk = 2, 64, 32  # 16 blocks per chunk
    shape = (2, nb, bs, NH, HS) if hint == "NHD" else (2, nb, NH, bs, HS)
    src = layers(shape)
    layout = KVCacheLayout(src, chunk, layout_hints={"kv_layout": hint})
    objs = [torch.zeros(layout.object_size, dtype=torch.uint8) for _ in range(2)]
    pool = CopyPool(threads)
    try:
        layout.gather([ids], [0, 1], objs, pool)
        for j, obj in enumerate(objs):
            assert torch.equal(obj, expected_object(src, ids[j * 16 : (j + 1) * 16], hint == "HND", chunk, bs))
        dst = [torch.zeros_like(t) for t in src]
        KVCacheLayout(dst, chunk, layout_hints={"kv_layout": hint}).scatter([ids], [0, 1], objs, 0, pool)
        for s, d in zip(src, dst, strict=True):
            assert torch.equal(d[:, ids], s[:, ids])
    finally:
        pool.close()


def test_copy_pool_runs_every_copy_exactly_once_across_concurrent_transfers() -> None:
    import threading

    pool = CopyPool(3)
    counts: dict[tuple[int, int], int] = {}
    lock = threading.Lock()

    def copy(t: int, i: int) -> None:
        torch.ones(64 * 1024).mul_(2)  # releases the GIL like a real copy
        with lock:
            counts[(t, i)] = counts.get((t, i), 0) + 1

    def transfer(t: int) -> None:
        for _ in range(5):
            pool.run([lambda i=i: copy(t, i) for i in range(40)])

    workers = [threading.Thread(target=transfer, args=(t,)) for t in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    pool.close()
    assert set(counts) == {(t, i) for t in range(4) for i in range(40)}
    assert set(counts.values()) == {5}


def test_copy_pool_reraises_the_first_error_and_stops_handing_out_copies() -> None:
    pool = CopyPool(2)
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("copy failed")

    with pytest.raises(RuntimeError, match="copy failed"):
        # Each later copy takes 2 ms: whichever thread takes `boom` fails long before the rest.
        pool.run([boom] + [lambda i=i: (time.sleep(0.002), ran.append(i)) for i in range(100)])
    assert len(ran) < 100  # the rest were not started after the failure
    pool.run([lambda: ran.append(-1), lambda: ran.append(-2)])  # still usable
    assert {-1, -2} <= set(ran)
    pool.close()
    pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pool.run([lambda: None, lambda: None])
    pool_one = CopyPool(1)
    pool_one.run([lambda: ran.append(-3)])  # one thread: runs inline, no helper threads
    assert ran[-1] == -3 and pool_one._executor is None
