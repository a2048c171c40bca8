"""SerdeL2Adapter.submit_recode (behind `lmcache kvcache compress`): re-coded blobs always load raw."""

from __future__ import annotations

from pathlib import Path

import torch

from lmcache_adapters.l2.fs import FSL2Adapter
from lmcache_adapters.l2.mock import MockL2Adapter
from lmcache_adapters.l2.serde import make_codec, wrap_with_serde
from lmcache_adapters.testing import make_key

TIMEOUT = 10


def payload(n: int, seed: int) -> memoryview:
    g = torch.Generator().manual_seed(seed)
    return memoryview(torch.randn(n, generator=g).to(torch.bfloat16).view(torch.uint8).numpy().tobytes())


def load(adapter, keys, n_bytes):  # type: ignore[no-untyped-def]
    bufs = [bytearray(n_bytes) for _ in keys]
    ok = adapter.submit_load(keys, [memoryview(b) for b in bufs]).result(timeout=TIMEOUT)
    return ok, [bytes(b) for b in bufs]


def test_recoded_blobs_load_raw_here_and_after_a_restart_with_another_codec(tmp_path: Path) -> None:
    base = str(tmp_path / "l2")
    keys = [make_key(i) for i in range(2)]
    data = [payload(512, i) for i in range(2)]
    first = wrap_with_serde(FSL2Adapter(base), {"type": "zlib"})
    assert first.submit_store(keys, data).result(timeout=TIMEOUT) == [True, True]
    outcomes = first.submit_recode([*keys, make_key(9)], make_codec({"type": "zstd"})).result(timeout=TIMEOUT)
    assert outcomes[2] is None and all(o is not None and o[0] > 0 and o[1] > 0 for o in outcomes[:2])
    assert load(first, keys, 1024) == ([True, True], [bytes(d) for d in data])
    first.close()
    # a later process configured with yet another codec still reads the re-coded blobs right
    second = wrap_with_serde(FSL2Adapter(base), {"type": "zlib", "level": 9})
    assert load(second, keys, 1024) == ([True, True], [bytes(d) for d in data])
    second.close()


def test_fp8_recode_names_its_dtype_per_object(tmp_path: Path) -> None:
    base = str(tmp_path / "l2")
    key = make_key(1)
    data = payload(256, 3)
    first = wrap_with_serde(FSL2Adapter(base), {"type": "zlib"})
    first.submit_store([key], [data]).result(timeout=TIMEOUT)
    (outcome,) = first.submit_recode([key], make_codec({"type": "fp8", "dtype": "bfloat16"})).result(timeout=TIMEOUT)
    assert outcome is not None and outcome[1] < 512
    first.close()
    second = wrap_with_serde(FSL2Adapter(base), {"type": "fp8", "dtype": "float16"})
    ok, (got,) = load(second, [key], 512)
    assert ok == [True]
    restored = torch.frombuffer(bytearray(got), dtype=torch.bfloat16).float()
    original = torch.frombuffer(bytearray(data), dtype=torch.bfloat16).float()
    assert torch.allclose(restored, original, rtol=0.15, atol=0.05)  # lossy, but decoded as bf16
    second.close()


def test_plain_blobs_of_another_codec_stay_misses() -> None:
    inner = MockL2Adapter()
    zlib_side = wrap_with_serde(inner, {"type": "zlib"})
    zlib_side.submit_store([make_key(1)], [payload(64, 1)]).result(timeout=TIMEOUT)
    zstd_side = wrap_with_serde(inner, {"type": "zstd"})
    zstd_side._lengths.update(zlib_side._lengths)  # same process, so the length is known
    assert load(zstd_side, [make_key(1)], 128)[0] == [False]
    zlib_side.close()
