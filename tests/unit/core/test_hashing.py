"""Tests of the chunk-hash chain: LMCache 0.5.0 values, input forms, incremental hashing, refusals."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
import torch
import xxhash
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.errors import ConfigError
from lmcache_core.hashing import (
    ACCEPTED_ALGORITHMS,
    NONE_HASH,
    IncrementalHasher,
    TokenHasher,
    none_hash_for,
    token_bytes,
)

BENCH_SEQ0 = [0] + [9906] * 512


@pytest.fixture
def fixed_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "0")


def hasher_for(algorithm: str, chunk_size: int = 256) -> TokenHasher:
    return TokenHasher(algorithm, chunk_size)


def reference_chain(algorithm: str, tokens: list[int], chunk_size: int) -> list[bytes]:
    """The chain written out the slow, obvious way, independent of the implementation."""
    digest = {
        "blake3": lambda b: blake3(b).digest(),
        "xxh3": xxhash.xxh3_128_digest,
        "sha256": lambda b: hashlib.sha256(b).digest(),
    }[algorithm]
    prev = digest(bytes(12))
    out = []
    for start in range(0, len(tokens) - chunk_size + 1, chunk_size):
        chunk = tokens[start : start + chunk_size]
        prev = digest(prev + b"".join(struct.pack(">I", t) for t in chunk))
        out.append(prev)
    return out


# ----------------------------------------------------------------------------- reference values


def test_none_hash_is_blake3_of_twelve_zero_bytes() -> None:
    assert NONE_HASH == blake3(bytes(12)).digest()
    assert NONE_HASH.hex() == "7e3eff9ef7613a50340eb12677ee03b83ac759fcba9bb32705f07248d56d473b"
    assert TokenHasher().none_hash == NONE_HASH


def test_bench_seq0_matches_lmcache_050() -> None:
    hashes = TokenHasher().chunk_hashes(BENCH_SEQ0)
    assert len(hashes) == 2  # 513 tokens: two full chunks, the last token ignored
    h0, h1 = (h.hex() for h in hashes)
    assert h0.startswith("d65391f7") and h0.endswith("9a336f")
    assert h1.startswith("4d033f8a") and h1.endswith("ea4b64")


@pytest.mark.parametrize("algorithm", ["blake3", "xxh3", "sha256"])
def test_matches_the_chain_written_out(algorithm: str) -> None:
    rng = np.random.default_rng(7)
    tokens = [int(t) for t in rng.integers(0, 2**32, size=5 * 64 + 17, dtype=np.uint64)]
    assert TokenHasher(algorithm, 64).chunk_hashes(tokens) == reference_chain(algorithm, tokens, 64)


def test_default_algorithm_and_chunk_size() -> None:
    hasher = TokenHasher()
    assert hasher.hash_algorithm_name == "blake3"
    assert hasher.chunk_size == 256
    assert hasher.digest_size == 32


def test_digest_sizes(fixed_seed: None) -> None:
    sizes = {name: TokenHasher(name).digest_size for name in ACCEPTED_ALGORITHMS}
    assert sizes == {"blake3": 32, "xxh3": 16, "sha256": 32, "builtin": 8}
    for name in ACCEPTED_ALGORITHMS:
        hasher = TokenHasher(name, 4)
        assert all(len(h) == hasher.digest_size for h in hasher.chunk_hashes(range(20)))


# ----------------------------------------------------------------------------- input forms


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint32, np.uint64, np.int16, np.uint16, np.uint8])
def test_numpy_dtypes_hash_like_a_list(dtype: type) -> None:
    tokens = [(i * 37) % 250 for i in range(600)]
    hasher = TokenHasher()
    assert hasher.chunk_hashes(np.asarray(tokens, dtype=dtype)) == hasher.chunk_hashes(tokens)


def test_torch_tuple_range_and_generator_hash_like_a_list() -> None:
    tokens = list(range(1000, 1000 + 700))
    hasher = TokenHasher()
    expected = hasher.chunk_hashes(tokens)
    assert len(expected) == 2
    assert hasher.chunk_hashes(torch.tensor(tokens)) == expected
    assert hasher.chunk_hashes(torch.tensor(tokens, dtype=torch.int32)) == expected
    assert hasher.chunk_hashes(tuple(tokens)) == expected
    assert hasher.chunk_hashes(range(1000, 1700)) == expected
    assert hasher.chunk_hashes(t for t in tokens) == expected
    assert hasher.chunk_hashes([np.int64(t) for t in tokens]) == expected


def test_non_contiguous_numpy_view() -> None:
    tokens = np.arange(1200, dtype=np.int64)
    hasher = TokenHasher(chunk_size=100)
    assert hasher.chunk_hashes(tokens[::2]) == hasher.chunk_hashes(list(range(0, 1200, 2)))


def test_only_full_chunks_are_hashed() -> None:
    hasher = TokenHasher(chunk_size=16)
    assert hasher.chunk_hashes([]) == []
    assert hasher.chunk_hashes(list(range(15))) == []
    full = hasher.chunk_hashes(list(range(32)))
    assert len(full) == 2
    assert hasher.chunk_hashes(list(range(47))) == full
    assert hasher.chunk_hashes(np.arange(47)) == full


def test_hash_identifies_the_whole_prefix() -> None:
    hasher = TokenHasher(chunk_size=8)
    a = hasher.chunk_hashes(list(range(24)))
    changed = list(range(24))
    changed[3] = 999  # first chunk differs; every later hash must differ too
    b = hasher.chunk_hashes(changed)
    assert all(x != y for x, y in zip(a, b, strict=True))
    changed_last = list(range(24))
    changed_last[20] = 999
    c = hasher.chunk_hashes(changed_last)
    assert c[:2] == a[:2] and c[2] != a[2]


def test_prev_continues_a_chain() -> None:
    hasher = TokenHasher(chunk_size=8)
    tokens = list(range(40))
    whole = hasher.chunk_hashes(tokens)
    head = hasher.chunk_hashes(tokens[:16])
    assert head + hasher.chunk_hashes(tokens[16:], prev=head[-1]) == whole
    assert hasher.chunk_hashes(tokens, prev=NONE_HASH) == whole


def test_prev_of_wrong_size_rejected() -> None:
    with pytest.raises(ValueError, match="32-byte"):
        TokenHasher().chunk_hashes(list(range(256)), prev=b"short")


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("bad", [-1, 2**32, 2**40])
def test_out_of_range_token_in_list_rejected_naming_it(bad: int) -> None:
    tokens = list(range(300))
    tokens[123] = bad
    with pytest.raises(ValueError, match=rf"token id {bad} at position 123"):
        TokenHasher().chunk_hashes(tokens)


@pytest.mark.parametrize("bad", [-5, 2**32, 2**33 + 1])
def test_out_of_range_token_in_array_rejected_naming_it(bad: int) -> None:
    tokens = np.arange(300, dtype=np.int64)
    tokens[200] = bad
    with pytest.raises(ValueError, match=rf"token id {bad} at position 200"):
        TokenHasher().chunk_hashes(tokens)
    with pytest.raises(ValueError, match=str(bad)):
        TokenHasher().chunk_hashes(torch.from_numpy(tokens))


def test_out_of_range_token_in_partial_tail_still_rejected() -> None:
    with pytest.raises(ValueError, match="-1"):
        TokenHasher(chunk_size=4).chunk_hashes([1, 2, 3, 4, -1])


def test_largest_token_id_accepted() -> None:
    hasher = TokenHasher(chunk_size=2)
    assert hasher.chunk_hashes([2**32 - 1, 0]) == hasher.chunk_hashes(np.array([2**32 - 1, 0], dtype=np.uint64))


@pytest.mark.parametrize(
    "bad",
    [
        [1, 2.5, 3],
        [1, "2", 3],
        [1, None],
        np.array([1.0, 2.0]),
        np.array([[1, 2], [3, 4]]),
        np.array([True, False]),
        torch.tensor([1.0, 2.0]),
        "1234",
        b"\x00\x01",
        42,
    ],
    ids=["float", "str", "none", "float-array", "2d", "bool-array", "float-tensor", "string", "bytes", "scalar"],
)
def test_non_integer_tokens_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        TokenHasher(chunk_size=2).chunk_hashes(bad)


def test_token_bytes_is_big_endian_uint32() -> None:
    assert token_bytes([1, 0x01020304]) == b"\x00\x00\x00\x01\x01\x02\x03\x04"
    assert token_bytes(np.array([1, 0x01020304], dtype=np.int64)) == b"\x00\x00\x00\x01\x01\x02\x03\x04"


# ----------------------------------------------------------------------------- configuration


def test_unknown_algorithm_names_accepted_ones() -> None:
    with pytest.raises(ConfigError, match="md5") as info:
        TokenHasher("md5")
    for name in ACCEPTED_ALGORITHMS:
        assert name in str(info.value)
    with pytest.raises(ConfigError):
        none_hash_for("md5")


@pytest.mark.parametrize("chunk_size", [0, -256, 2.5, True, "256"])
def test_bad_chunk_size_rejected(chunk_size: object) -> None:
    with pytest.raises(ConfigError, match="chunk_size"):
        TokenHasher("blake3", chunk_size)  # type: ignore[arg-type]


def test_builtin_refused_without_pythonhashseed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    with pytest.raises(ConfigError, match="PYTHONHASHSEED"):
        TokenHasher("builtin")


@pytest.mark.parametrize("seed", ["random", "", "-1", "4294967296", "abc"])
def test_builtin_refused_with_unfixed_pythonhashseed(monkeypatch: pytest.MonkeyPatch, seed: str) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", seed)
    with pytest.raises(ConfigError, match="PYTHONHASHSEED"):
        TokenHasher("builtin")


def test_builtin_with_fixed_seed_hashes_python_tuples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHASHSEED", "42")
    hasher = TokenHasher("builtin", 4)
    assert hasher.hash_algorithm_name == "builtin"
    hashes = hasher.chunk_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9])
    prev = int.from_bytes(hasher.none_hash, "big", signed=True)
    h0 = hash((prev, (1, 2, 3, 4)))
    h1 = hash((h0, (5, 6, 7, 8)))
    assert hashes == [h0.to_bytes(8, "big", signed=True), h1.to_bytes(8, "big", signed=True)]


def test_each_algorithm_deterministic_and_distinct(fixed_seed: None) -> None:
    tokens = list(range(5000, 5000 + 1024))
    results = {}
    for name in ACCEPTED_ALGORITHMS:
        first = TokenHasher(name).chunk_hashes(tokens)
        assert TokenHasher(name).chunk_hashes(np.asarray(tokens)) == first
        assert len(first) == 4 and len(set(first)) == 4
        results[name] = first
    all_hashes = [h for hashes in results.values() for h in hashes]
    assert len(set(all_hashes)) == len(all_hashes)
    assert len({none_hash_for(name) for name in ACCEPTED_ALGORITHMS}) == len(ACCEPTED_ALGORITHMS)


def test_chunk_size_changes_hashes() -> None:
    tokens = list(range(512))
    assert TokenHasher(chunk_size=128).chunk_hashes(tokens)[1] != TokenHasher(chunk_size=256).chunk_hashes(tokens)[0]


# ----------------------------------------------------------------------------- incremental


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 2**32 - 1), max_size=80),
    cuts=st.lists(st.integers(0, 80), max_size=6),
    algorithm=st.sampled_from(["blake3", "xxh3", "sha256"]),
)
def test_incremental_extend_equals_one_shot(tokens: list[int], cuts: list[int], algorithm: str) -> None:
    hasher = TokenHasher(algorithm, chunk_size=8)
    inc = hasher.incremental()
    collected: list[bytes] = []
    bounds = sorted({min(c, len(tokens)) for c in cuts} | {0, len(tokens)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        collected.extend(inc.extend(tokens[lo:hi]))
    expected = hasher.chunk_hashes(tokens)
    assert collected == expected
    assert inc.hashes == expected
    assert inc.num_tokens == len(tokens)
    assert inc.tokens().tolist() == tokens


@settings(max_examples=60, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 50), min_size=0, max_size=80),
    lengths=st.lists(st.integers(0, 80), min_size=1, max_size=6),
)
def test_update_to_growing_prefixes_equals_one_shot(tokens: list[int], lengths: list[int]) -> None:
    hasher = TokenHasher(chunk_size=8)
    inc = hasher.incremental()
    for n in sorted(lengths) + [len(tokens)]:
        assert inc.update_to(tokens[:n]) == hasher.chunk_hashes(tokens[:n])


@settings(max_examples=60, deadline=None)
@given(
    sequences=st.lists(st.lists(st.integers(0, 3), max_size=40), min_size=1, max_size=5),
)
def test_update_to_any_sequence_equals_one_shot(sequences: list[list[int]]) -> None:
    # Arbitrary sequences, including shorter and diverging ones (small alphabet: shared prefixes).
    hasher = TokenHasher(chunk_size=4)
    inc = hasher.incremental()
    for seq in sequences:
        assert inc.update_to(np.asarray(seq, dtype=np.int64)) == hasher.chunk_hashes(seq)
        assert inc.tokens().tolist() == seq


class CountingHasher(TokenHasher):
    """Records how many bytes each chain call hashed, to prove nothing is rehashed."""

    def __init__(self) -> None:
        super().__init__("blake3", 4)
        self.hashed_bytes: list[int] = []

    def hash_token_bytes(self, data, prev=None):  # type: ignore[no-untyped-def]
        self.hashed_bytes.append(len(data))
        return super().hash_token_bytes(data, prev)


def test_update_to_hashes_only_new_chunks() -> None:
    counting = CountingHasher()
    inc = IncrementalHasher(counting)
    inc.update_to(list(range(8)))  # two chunks
    inc.update_to(list(range(10)))  # no new full chunk
    inc.update_to(list(range(13)))  # one new chunk
    assert counting.hashed_bytes == [32, 16]
    assert len(inc.hashes) == 3


def test_update_to_divergence_rehashes_from_the_changed_chunk_only() -> None:
    counting = CountingHasher()
    inc = IncrementalHasher(counting)
    tokens = list(range(16))
    inc.update_to(tokens)
    changed = tokens[:9] + [999] + tokens[10:]  # chunk 2 (tokens 8..11) changed
    result = inc.update_to(changed)
    assert counting.hashed_bytes == [64, 32]  # chunks 2 and 3 again, never 0 and 1
    assert result == TokenHasher("blake3", 4).chunk_hashes(changed)


def test_update_to_shorter_sequence_truncates() -> None:
    hasher = TokenHasher(chunk_size=4)
    inc = hasher.incremental()
    inc.update_to(list(range(16)))
    assert inc.update_to(list(range(9))) == hasher.chunk_hashes(list(range(9)))
    assert inc.num_tokens == 9


def test_extend_returns_only_completed_chunks_and_reset_forgets() -> None:
    hasher = TokenHasher(chunk_size=4)
    inc = hasher.incremental()
    assert inc.extend([1, 2, 3]) == []
    new = inc.extend([4, 5])
    assert new == hasher.chunk_hashes([1, 2, 3, 4])
    inc.reset()
    assert inc.num_tokens == 0 and inc.hashes == []
    assert inc.extend([1, 2, 3, 4]) == new


def test_extend_rejects_bad_tokens_without_changing_state() -> None:
    inc = TokenHasher(chunk_size=4).incremental()
    inc.extend([1, 2, 3])
    with pytest.raises(ValueError):
        inc.extend([4, -1])
    assert inc.num_tokens == 3


def test_token_bytes_pass_through_untouched_and_validate_length() -> None:
    from lmcache_core.hashing import TokenBytes

    data = TokenBytes.from_tokens([1, 2**32 - 1, 0])
    assert data == token_bytes([1, 2**32 - 1, 0])
    assert token_bytes(data) is data
    assert TokenHasher().chunk_hashes(TokenBytes.from_tokens(BENCH_SEQ0)) == TokenHasher().chunk_hashes(BENCH_SEQ0)
    with pytest.raises(ValueError, match="multiple of 4"):
        TokenBytes(b"\x00\x00\x01")
    with pytest.raises(ValueError):
        TokenBytes.from_tokens([2**32])


def test_adopt_takes_over_hashes_and_later_growth_hashes_only_new_chunks() -> None:
    from lmcache_core.hashing import TokenBytes

    hasher = TokenHasher("blake3", chunk_size=4)
    tokens = list(range(10))
    source = hasher.incremental()
    hashes = source.update_to(tokens)
    target = hasher.incremental()
    target.adopt(TokenBytes.from_tokens(tokens), hashes)
    assert target.hashes == hashes and target.num_tokens == 10
    assert target.update_to(tokens + [7, 7]) == hasher.chunk_hashes(tokens + [7, 7])
    with pytest.raises(ValueError, match="full chunks"):
        hasher.incremental().adopt(TokenBytes.from_tokens(tokens), hashes[:1])
