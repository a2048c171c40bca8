"""Tests of ObjectKey: validation, the JSON and storage-name forms, kv_rank packing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmcache_core.errors import InvalidKeyError
from lmcache_core.keys import (
    MAX_SALT_LEN,
    ObjectKey,
    kv_rank_for,
    pack_kv_rank,
    unpack_kv_rank,
)

HASH = bytes.fromhex("d65391f7dcbfb7f8472e8942ce76f5ca70a3ab0ffd0978c0640a27d07a9a336f")
RANK = 0x01000100

# Model names stress the escaping: path separators, the escape char and its codes, plus unicode.
model_names = st.text(
    alphabet=st.one_of(st.sampled_from("/%2F5a.-_ \\:\n"), st.characters(blacklist_characters="@\x00")),
    min_size=1,
    max_size=30,
)
salts = st.one_of(
    st.just(""),
    st.text(alphabet=st.characters(blacklist_characters="@/\\\x00"), max_size=MAX_SALT_LEN),
)
valid_keys = st.builds(
    ObjectKey,
    chunk_hash=st.binary(min_size=1, max_size=40),
    model_name=model_names,
    kv_rank=st.integers(0, 2**32 - 1),
    object_group_id=st.integers(0, 2**40),
    cache_salt=salts,
)


def key(**overrides: Any) -> ObjectKey:
    fields: dict[str, Any] = {"chunk_hash": HASH, "model_name": "org/model", "kv_rank": RANK}
    fields.update(overrides)
    return ObjectKey(**fields)


def encoded(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"chunk_hash_hex": HASH.hex(), "model_name": "org/model", "kv_rank": RANK}
    obj.update(overrides)
    return obj


# ----------------------------------------------------------------------------- round trips


@settings(max_examples=100)
@given(k=valid_keys)
def test_json_round_trip(k: ObjectKey) -> None:
    assert ObjectKey.from_json(k.to_json()) == k


@settings(max_examples=100)
@given(k=valid_keys)
def test_storage_name_round_trip_is_one_path_component(k: ObjectKey) -> None:
    name = k.to_storage_name()
    assert "/" not in name and "\x00" not in name
    assert ObjectKey.from_storage_name(name) == k


@settings(max_examples=60)
@given(a=valid_keys, b=valid_keys)
def test_distinct_keys_have_distinct_storage_names(a: ObjectKey, b: ObjectKey) -> None:
    assume(a != b)
    assert a.to_storage_name() != b.to_storage_name()


_NAME_ALPHABET = st.sampled_from(list("0123456789abcdefABF%/@x \n\\") + ["%2F", "%25", "@", "@0@"])


@settings(max_examples=200)
@given(name=st.lists(_NAME_ALPHABET, max_size=30).map("".join))
def test_any_string_parses_canonically_or_is_rejected(name: str) -> None:
    # Listing an L2 meets arbitrary file names: each either is the name of exactly one key, or
    # is rejected with InvalidKeyError (never another exception, never a non-canonical parse).
    try:
        k = ObjectKey.from_storage_name(name)
    except InvalidKeyError:
        return
    assert k.to_storage_name() == name


def test_storage_name_shape() -> None:
    k = key(object_group_id=26, cache_salt="tenant-a")
    assert k.to_storage_name() == f"org%2Fmodel@01000100@1a@{HASH.hex()}@tenant-a"
    assert key().to_storage_name() == f"org%2Fmodel@01000100@0@{HASH.hex()}"
    assert key(model_name="100%/x").to_storage_name().startswith("100%25%2Fx@")


def test_json_shape_and_defaults() -> None:
    assert key().to_json() == {
        "chunk_hash_hex": HASH.hex(),
        "model_name": "org/model",
        "kv_rank": RANK,
        "object_group_id": 0,
        "cache_salt": "",
    }
    assert ObjectKey.from_json(encoded()) == key()


def test_keys_are_frozen_and_hashable() -> None:
    k = key()
    assert {k: 1}[key()] == 1
    with pytest.raises(AttributeError):
        k.model_name = "other"  # type: ignore[misc]


def test_salt_separates_keys() -> None:
    assert key(cache_salt="a") != key(cache_salt="b") != key()
    assert key(cache_salt="a").to_storage_name() != key().to_storage_name()


# ----------------------------------------------------------------------------- invalid keys


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model_name": ""}, "model_name"),
        ({"model_name": "a@b"}, "model_name"),
        ({"model_name": "a\x00b"}, "model_name"),
        ({"model_name": 7}, "model_name"),
        ({"object_group_id": -1}, "object_group_id"),
        ({"object_group_id": True}, "object_group_id"),
        ({"object_group_id": 1.0}, "object_group_id"),
        ({"cache_salt": "x" * (MAX_SALT_LEN + 1)}, "cache_salt"),
        ({"cache_salt": "a@b"}, "cache_salt"),
        ({"cache_salt": "a/b"}, "cache_salt"),
        ({"cache_salt": "a\\b"}, "cache_salt"),
        ({"cache_salt": "a\x00b"}, "cache_salt"),
        ({"cache_salt": None}, "cache_salt"),
        ({"kv_rank": -1}, "kv_rank"),
        ({"kv_rank": 2**32}, "kv_rank"),
        ({"kv_rank": True}, "kv_rank"),
        ({"kv_rank": "16777472"}, "kv_rank"),
        ({"kv_rank": 1.0}, "kv_rank"),
        ({"chunk_hash": b""}, "chunk_hash"),
        ({"chunk_hash": HASH.hex()}, "chunk_hash"),
        ({"chunk_hash": bytearray(HASH)}, "chunk_hash"),
    ],
)
def test_invalid_key_rejected_naming_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidKeyError, match=field):
        key(**overrides)


def test_salt_of_exactly_max_length_accepted() -> None:
    assert key(cache_salt="s" * MAX_SALT_LEN).cache_salt == "s" * MAX_SALT_LEN


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (encoded(extra=1), "extra"),
        (encoded(chunk_hash=HASH.hex()), "chunk_hash"),
        ({"model_name": "m", "kv_rank": 1}, "chunk_hash_hex"),
        ({"chunk_hash_hex": "ab", "kv_rank": 1}, "model_name"),
        ({"chunk_hash_hex": "ab", "model_name": "m"}, "kv_rank"),
        (encoded(chunk_hash_hex=HASH.hex().upper()), "chunk_hash_hex"),
        (encoded(chunk_hash_hex="abc"), "chunk_hash_hex"),
        (encoded(chunk_hash_hex=""), "chunk_hash_hex"),
        (encoded(chunk_hash_hex="zz"), "chunk_hash_hex"),
        (encoded(chunk_hash_hex="abc\n"), "chunk_hash_hex"),
        (encoded(chunk_hash_hex=" abc"), "chunk_hash_hex"),
        (encoded(chunk_hash_hex=1234), "chunk_hash_hex"),
        (encoded(kv_rank=True), "kv_rank"),
        (encoded(kv_rank=1.0), "kv_rank"),
        (encoded(kv_rank="1"), "kv_rank"),
        (encoded(kv_rank=-3), "kv_rank"),
        (encoded(object_group_id=False), "object_group_id"),
        (encoded(object_group_id="0"), "object_group_id"),
        (encoded(object_group_id=-2), "object_group_id"),
        (encoded(model_name=""), "model_name"),
        (encoded(model_name="a@b"), "model_name"),
        (encoded(model_name=None), "model_name"),
        (encoded(cache_salt="a/b"), "cache_salt"),
        (encoded(cache_salt=5), "cache_salt"),
    ],
)
def test_from_json_rejects_naming_field(obj: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidKeyError, match=field):
        ObjectKey.from_json(obj)


@pytest.mark.parametrize("obj", [None, [], "key", 5, [HASH.hex(), "m", 1]])
def test_from_json_rejects_non_objects(obj: Any) -> None:
    with pytest.raises(InvalidKeyError, match="JSON object"):
        ObjectKey.from_json(obj)


H = HASH.hex()


@pytest.mark.parametrize(
    ("name", "field"),
    [
        (f"m@1000100@0@{H}", "kv_rank"),  # 7 digits
        (f"m@001000100@0@{H}", "kv_rank"),  # 9 digits
        (f"m@0100010G@0@{H}", "kv_rank"),
        (f"m@0100010A@0@{H}", "kv_rank"),  # uppercase
        (f"m@0100010\n@0@{H}", "kv_rank"),  # int() would skip the newline
        (f"m@01000100@@{H}", "object_group_id"),
        (f"m@01000100@00@{H}", "object_group_id"),  # not canonical
        (f"m@01000100@1\n@{H}", "object_group_id"),
        (f"m@01000100@-1@{H}", "object_group_id"),
        (f"m@01000100@A@{H}", "object_group_id"),
        ("m@01000100@0@", "chunk hash"),
        ("m@01000100@0@abc", "chunk hash"),
        (f"m@01000100@0@{H.upper()}", "chunk hash"),
        ("m@01000100@0@abc\n", "chunk hash"),
        (f"@01000100@0@{H}", "model_name"),
        (f"a/b@01000100@0@{H}", "'/'"),
        (f"a%2f@01000100@0@{H}", "escape"),
        (f"a%@01000100@0@{H}", "escape"),
        (f"a%41@01000100@0@{H}", "escape"),
        (f"m@01000100@0@{H}@", "salt"),
        (f"m@01000100@0@{H}@a\\b", "cache_salt"),
        (f"m@01000100@0@{H}@{'s' * (MAX_SALT_LEN + 1)}", "cache_salt"),
    ],
)
def test_from_storage_name_rejects_naming_field(name: str, field: str) -> None:
    with pytest.raises(InvalidKeyError, match=field):
        ObjectKey.from_storage_name(name)


@pytest.mark.parametrize(
    "name",
    ["", "junk", "README.md", ".tmp-upload-123", "m@01000100@0", f"m@01000100@0@{H}@salt@more", "@@@"],
)
def test_from_storage_name_rejects_junk(name: str) -> None:
    with pytest.raises(InvalidKeyError):
        ObjectKey.from_storage_name(name)


@pytest.mark.parametrize("name", [None, b"m@01000100@0@ab", 5])
def test_from_storage_name_rejects_non_strings(name: Any) -> None:
    with pytest.raises(InvalidKeyError, match="storage name"):
        ObjectKey.from_storage_name(name)


# ----------------------------------------------------------------------------- kv_rank


def test_kv_rank_for_matches_lmcache() -> None:
    assert kv_rank_for(1, 0) == 0x01000100
    assert kv_rank_for(4, 3) == 0x04030403
    assert unpack_kv_rank(0x01000100) == (1, 0, 1, 0)


@given(
    ws=st.integers(1, 255),
    lws=st.integers(1, 255),
    data=st.data(),
)
def test_kv_rank_pack_unpack_round_trip(ws: int, lws: int, data: st.DataObject) -> None:
    rank = data.draw(st.integers(0, ws - 1))
    local_rank = data.draw(st.integers(0, lws - 1))
    packed = pack_kv_rank(ws, rank, lws, local_rank)
    assert 0 <= packed < 2**32
    assert unpack_kv_rank(packed) == (ws, rank, lws, local_rank)
    assert key(kv_rank=packed).kv_rank == packed


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((0, 0, 1, 0), "world_size"),
        ((1, 0, 0, 0), "local_world_size"),
        ((2, 2, 1, 0), "global_rank"),
        ((2, 0, 2, 2), "local_rank"),
        ((256, 0, 1, 0), "world_size"),
        ((1, -1, 1, 0), "global_rank"),
        ((True, 0, 1, 0), "world_size"),
        ((1.0, 0, 1, 0), "world_size"),
    ],
)
def test_pack_kv_rank_rejects_naming_part(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(InvalidKeyError, match=field):
        pack_kv_rank(*args)


@pytest.mark.parametrize("bad", [-1, 2**32, True, 1.5, "1"])
def test_unpack_kv_rank_rejects(bad: Any) -> None:
    with pytest.raises(InvalidKeyError, match="kv_rank"):
        unpack_kv_rank(bad)


def test_trusted_keys_equal_validated_ones_and_hash_alike() -> None:
    checked = ObjectKey(HASH, "org/model", RANK, 0, "tenant")
    trusted = ObjectKey.trusted(HASH, "org/model", RANK, "tenant")
    assert trusted == checked and hash(trusted) == hash(checked)
    assert {checked: 1}[trusted] == 1
    assert trusted.to_storage_name() == checked.to_storage_name()
    assert trusted != ObjectKey.trusted(HASH, "org/model", RANK, "other")
    assert trusted != ObjectKey(HASH, "org/model", RANK, 1, "tenant")
    assert trusted != (HASH, "org/model", RANK, 0, "tenant")


def test_keys_pickle_and_copy_without_carrying_the_cached_hash() -> None:
    import copy
    import pickle

    original = ObjectKey(HASH, "m", RANK, 2, "s")
    for clone in (pickle.loads(pickle.dumps(original)), copy.copy(original), copy.deepcopy(original)):
        assert clone == original and hash(clone) == hash(original)
    # The cached hash is rebuilt on load (str hashes differ between processes).
    assert b"_hash" not in pickle.dumps(original)
