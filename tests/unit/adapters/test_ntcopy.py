"""Non-temporal copies: the glibc tunable's parsing and the memmove path of KV transfers."""

from __future__ import annotations

import pytest
import torch

from lmcache_adapters.transfer import ntcopy
from lmcache_adapters.transfer.copy_pool import CopyPool
from lmcache_adapters.transfer.layout import KVCacheLayout

TUNABLE = "glibc.cpu.x86_non_temporal_threshold"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        (f"{TUNABLE}=0x40000", 0x40000),
        (f"glibc.malloc.arena_max=2:{TUNABLE}=262144", 262144),
        (f"{TUNABLE}=0x100", None),  # below glibc's minimum: glibc ignores it, so do we
        (f"{TUNABLE}=lots", None),
        ("glibc.malloc.arena_max=2", None),
    ],
)
def test_the_threshold_is_read_from_glibc_tunables(value: str, expected: int | None) -> None:
    assert ntcopy.non_temporal_threshold({"GLIBC_TUNABLES": value}) == expected


def test_setting_the_threshold_keeps_other_tunables_and_replaces_an_old_value() -> None:
    assert ntcopy.tunables_with_threshold("", 0x40000) == f"{TUNABLE}=0x40000"
    got = ntcopy.tunables_with_threshold(f"glibc.malloc.arena_max=2:{TUNABLE}=0x9999999", 0x40000)
    assert got == f"glibc.malloc.arena_max=2:{TUNABLE}=0x40000"
    assert ntcopy.non_temporal_threshold({"GLIBC_TUNABLES": got}) == 0x40000


def test_copy_rows_copies_only_what_it_can_copy_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    src = torch.randn(2, 8, 1024)
    dst = torch.zeros(2, 8, 1024)
    monkeypatch.setattr(ntcopy, "_THRESHOLD", None)  # a process started without the tunable
    assert not ntcopy.copy_rows(dst, src) and int(dst.abs().sum()) == 0
    monkeypatch.setattr(ntcopy, "_THRESHOLD", 1024)
    assert ntcopy.copy_rows(dst, src) and torch.equal(dst, src)
    # Rows need not be adjacent: K and V of a block run lie far apart in a KV tensor.
    big = torch.randn(2, 32, 1024)
    spaced_src, spaced_dst = big[:, 4:12], torch.zeros(2, 16, 1024)[:, 2:10]
    assert ntcopy.copy_rows(spaced_dst, spaced_src) and torch.equal(spaced_dst, spaced_src)
    small = torch.zeros(2, 2, 8)
    assert not ntcopy.copy_rows(small, torch.ones(2, 2, 8))  # rows below the threshold
    monkeypatch.setattr(ntcopy, "_THRESHOLD", 16)
    assert not ntcopy.copy_rows(torch.zeros(2, 1024, 8), src.transpose(1, 2))  # rows not contiguous
    assert not ntcopy.copy_rows(torch.zeros(2, 8, 1024, dtype=torch.float16), src)  # other dtype
    assert not ntcopy.copy_rows(torch.zeros(2, 1024, 8), src)  # other shape
    assert int(small.sum()) == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_transfers_through_memmove_match_torch_copies(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    nb, bs, nh, hs, chunk = 64, 2, 2, 4, 32  # 16 blocks per chunk, 256-byte K and V pieces
    g = torch.Generator().manual_seed(3)
    src = [torch.randn((2, nb, bs, nh, hs), generator=g).half() for _ in range(3)]
    ids = [list(range(3, 35))]  # one run per chunk: the memmove path
    monkeypatch.setattr(ntcopy, "_THRESHOLD", None)  # torch's copies
    expected = [torch.zeros(KVCacheLayout(src, chunk).object_size, dtype=torch.uint8) for _ in range(2)]
    KVCacheLayout(src, chunk).gather(ids, [0, 1], expected)
    calls = []
    real = ntcopy._memmove

    def counting(dst: int, src_: int, n: int) -> int:
        calls.append(n)
        return real(dst, src_, n)

    monkeypatch.setattr(ntcopy, "_THRESHOLD", 64)
    monkeypatch.setattr(ntcopy, "_memmove", counting)
    pool = CopyPool(threads)
    try:
        layout = KVCacheLayout(src, chunk)
        objs = [torch.zeros(layout.object_size, dtype=torch.uint8) for _ in range(2)]
        layout.gather(ids, [0, 1], objs, pool)
        assert all(torch.equal(a, b) for a, b in zip(objs, expected, strict=True))
        assert len(calls) == 2 * 3 * 2  # chunks x layers x (K, V)
        dst = [torch.zeros_like(t) for t in src]
        KVCacheLayout(dst, chunk).scatter(ids, [0, 1], objs, 2 * 3, pool)  # skips 3 blocks
        written = ids[0][3:]
        for s, d in zip(src, dst, strict=True):
            assert torch.equal(d[:, written], s[:, written])
            assert int(d[:, ids[0][:3]].abs().sum()) == 0
    finally:
        pool.close()
