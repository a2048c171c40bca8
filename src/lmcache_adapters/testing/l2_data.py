"""Keys and payloads the L2 contract suites store: deterministic, and made without torch."""

from __future__ import annotations

import numpy as np

from lmcache_core.keys import ObjectKey, kv_rank_for

SMALL_ELEMS = 512  # 1 KiB of bfloat16


def make_key(i: int, *, model_name: str = "contract/model-a", cache_salt: str = "", rank: int = 0) -> ObjectKey:
    """A deterministic key: the chunk hash is 32 bytes derived from `i` (so distinct i -> distinct key)."""
    chunk_hash = i.to_bytes(8, "big") * 4
    return ObjectKey(
        chunk_hash=chunk_hash,
        model_name=model_name,
        kv_rank=kv_rank_for(2, rank),
        object_group_id=0,
        cache_salt=cache_salt,
    )


def tensor_payload(n_elems: int = SMALL_ELEMS, seed: int = 0) -> memoryview:
    """`n_elems` bfloat16 values from a seeded normal distribution, as a read-only byte view.

    bfloat16 is the upper half of a float32 (rounded to nearest even here, as a cast does), so
    the values are finite and a lossy codec (fp8) sees the numbers a KV cache holds."""
    values = np.random.default_rng(seed).standard_normal(n_elems, dtype=np.float32)
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest, ties to even
    return memoryview(rounded.astype("<u2").tobytes())
