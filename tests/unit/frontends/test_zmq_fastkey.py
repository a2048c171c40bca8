"""KeyFrameDecoder: recently seen token arrays skip the msgpack int decode, never changing results."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.hashing import TokenBytes, token_bytes
from lmcache_frontends.client import make_key
from lmcache_frontends.zmq.fastkey import KeyFrameDecoder
from lmcache_frontends.zmq.protocol import (
    ProtocolError,
    decode,
    encode,
    encode_key,
    encode_token_array,
    parse_key,
)

# Every width msgpack uses for a non-negative int below 2^32, mixed.
TOKEN = st.one_of(
    st.integers(0, 0x7F), st.integers(0x80, 0xFF), st.integers(0x100, 0xFFFF), st.integers(0x10000, 2**32 - 1)
)


def key_map(tokens: Any, **over: Any) -> dict[str, Any]:
    m = {
        "model_name": "m",
        "world_size": 1,
        "worker_id": None,
        "token_ids": tokens,
        "start": 0,
        "end": 0,
        "request_id": "r",
        "cache_salt": "",
    }
    m.update(over)
    return m


@settings(max_examples=40, deadline=None)
@given(st.lists(TOKEN, min_size=1, max_size=40), st.integers(4200, 4400))
def test_decoded_key_equals_the_normal_decoder(sample: list[int], n: int) -> None:
    # Large enough to be cached (a frame over 4 KiB even with 1-byte tokens); widths mixed in any order by the sample.
    tokens = (sample * (n // len(sample) + 1))[:n]
    frame = encode(key_map(tokens, end=n))
    dec = KeyFrameDecoder()
    normal = decode(frame)
    for _ in range(2):  # a miss, then a hit
        fast = dec.decode(frame)
        assert fast is not None
        assert isinstance(fast["token_ids"], TokenBytes)
        assert np.frombuffer(fast["token_ids"], ">u4").tolist() == normal["token_ids"] == tokens
        assert {k: v for k, v in fast.items() if k != "token_ids"} == {
            k: v for k, v in normal.items() if k != "token_ids"
        }
        fast_key, normal_key = parse_key(fast), parse_key(normal)
        assert fast_key.identity(None) == normal_key.identity(None)
        assert token_bytes(fast_key.token_ids) == token_bytes(normal_key.token_ids)
    if all(t >= 0x10000 for t in tokens):
        # Every id took msgpack's uint32 form: the fixed-width reader decodes it the first time.
        assert (dec.fixed_width, dec.misses, dec.hits) == (1, 0, 1)
    else:
        assert (dec.fixed_width, dec.misses, dec.hits) == (0, 1, 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(TOKEN, min_size=1, max_size=40), st.integers(1000, 1100), st.sampled_from(["", "tenant-a"]))
def test_fixed_width_key_frames_decode_like_the_normal_decoder(sample: list[int], n: int, salt: str) -> None:
    tokens = (sample * (n // len(sample) + 1))[:n]
    key = make_key("model/©token_ids", tokens, "req", end=0, worker_id=0, cache_salt=salt)
    frame = encode_key(key)
    normal = decode(frame)  # any msgpack decoder reads the fixed-width form
    assert normal["token_ids"] == tokens
    dec = KeyFrameDecoder()
    fast = dec.decode(frame)
    assert fast is not None and dec.fixed_width == 1 and (dec.misses, dec.hits) == (0, 0)
    assert np.frombuffer(fast["token_ids"], ">u4").tolist() == tokens
    assert {k: v for k, v in fast.items() if k != "token_ids"} == {k: v for k, v in normal.items() if k != "token_ids"}
    assert list(fast) == list(normal)  # field order kept


@pytest.mark.parametrize("position", ["first", "last"])
def test_token_ids_anywhere_in_the_map(position: str) -> None:
    tokens = list(range(70000, 71000))
    fields = key_map(fixed_width_stub := None)
    del fields["token_ids"]
    items = list(fields.items())
    items = [("token_ids", fixed_width_stub), *items] if position == "first" else [*items, ("token_ids", None)]
    parts = [b"\x88"]
    for name, value in items:
        parts.append(msgpack.packb(name))
        parts.append(encode_token_array(TokenBytes.from_tokens(tokens)) if name == "token_ids" else msgpack.packb(value))
    frame = b"".join(parts)
    fast = KeyFrameDecoder().decode(frame)
    assert fast is not None and fast == {**decode(frame), "token_ids": fast["token_ids"]}
    assert np.frombuffer(fast["token_ids"], ">u4").tolist() == tokens


def test_a_field_name_inside_a_string_value_is_not_taken_for_the_field() -> None:
    tokens = list(range(2000))
    # The model name holds the exact bytes of the "token_ids" field name (as a str8 value).
    frame = encode(key_map(tokens, model_name="x\xa9token_ids" * 3))
    fast = KeyFrameDecoder().decode(frame)
    normal = decode(frame)
    assert fast is None or (fast["model_name"] == normal["model_name"] and fast["start"] == normal["start"])
    frame = encode_key(make_key("m\xa9token_ids", tokens, "r", end=0))
    fast = KeyFrameDecoder().decode(frame)
    assert fast is not None and fast["model_name"] == "m\xa9token_ids"


def test_damaged_fixed_width_arrays_fall_back() -> None:
    frame = bytearray(encode_key(make_key("m", list(range(2000)), "r", end=0)))
    at = frame.find(b"\xa9token_ids") + 10
    assert frame[at] == 0xDC and frame[at + 3] == 0xCE
    wrong_tag = bytearray(frame)
    wrong_tag[at + 3 + 5 * 7] = 0xCD  # one tag changed: the array no longer parses the same way
    assert KeyFrameDecoder(max_entries=0).decode(bytes(wrong_tag)) is None
    with pytest.raises(ProtocolError):
        decode(bytes(wrong_tag))  # and the normal path reports it
    assert KeyFrameDecoder().decode(bytes(frame[:-1])) is None  # truncated
    assert KeyFrameDecoder().decode(bytes(frame) + b"\x00") is None  # trailing bytes


def test_a_hit_returns_the_same_token_bytes_object_across_request_ids() -> None:
    dec = KeyFrameDecoder()
    tokens = list(range(5000))
    a = dec.decode(encode(key_map(tokens, request_id="a")))
    b = dec.decode(encode(key_map(tokens, request_id="b")))
    assert a is not None and b is not None
    assert a["token_ids"] is b["token_ids"]  # what lets sessions recognise the sequence
    assert (a["request_id"], b["request_id"]) == ("a", "b")


@pytest.mark.parametrize(
    "tokens",
    [
        [-1] + [5] * 2000,  # negative
        [5] * 2000 + [2**32],  # too large (uint64)
        [5] * 2000 + [1.5],  # not an int
        [5] * 2000 + ["x"],
        [5] * 2000 + [None],
    ],
)
def test_invalid_tokens_fall_back_to_the_normal_path(tokens: list[Any]) -> None:
    frame = encode(key_map(tokens))
    assert KeyFrameDecoder().decode(frame) is None


def test_frames_it_does_not_handle_fall_back() -> None:
    dec = KeyFrameDecoder()
    big = list(range(2000))
    assert dec.decode(encode(key_map(list(range(10))))) is None  # too small to be worth it
    assert dec.decode(encode([big])) is None  # not a map
    assert dec.decode(encode(key_map({"a": big}))) is None  # token_ids not an array
    assert dec.decode(encode(key_map(big)) + b"\x00") is None  # trailing bytes
    assert dec.decode(encode(key_map(big))[:-3]) is None  # truncated
    assert dec.decode(msgpack.packb({"model_name": "m", "x": big})) is None  # no token_ids
    # The normal path still reports these exactly as before.
    with pytest.raises(ProtocolError):
        decode(encode(key_map(big)) + b"\x00")


def test_cache_is_bounded_lru() -> None:
    dec = KeyFrameDecoder(max_entries=2)
    frames = [encode(key_map(list(range(i, i + 2000)))) for i in range(3)]
    for f in frames:
        assert dec.decode(f) is not None
    assert len(dec) == 2
    dec.decode(frames[0])  # evicted: a miss again
    assert dec.misses == 4 and dec.hits == 0
    assert KeyFrameDecoder(max_entries=0).decode(frames[0]) is None


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed-width", "smallest-width"])
def test_an_array_that_only_matches_the_samples_is_decoded_again(fixed: bool) -> None:
    # Same length, same head, middle and end: only a byte between the sampled spots differs.
    # The stored copy is compared in full, so the second array is never taken for the first.
    tokens = [70000 + i for i in range(3000)] if fixed else [i % 300 for i in range(3000)]
    other = list(tokens)
    other[700] += 1
    frames = [encode_key(make_key("m", t, "r", end=0)) if fixed else encode(key_map(t)) for t in (tokens, other)]
    dec = KeyFrameDecoder()
    for f, t in ((frames[0], tokens), (frames[1], other), (frames[1], other), (frames[0], tokens)):
        got = dec.decode(f)
        assert got is not None and np.frombuffer(got["token_ids"], ">u4").tolist() == t
    assert dec.hits == 1  # only the immediate repeat of `other`
    assert dec.fixed_width + dec.misses == 3


def test_recognised_arrays_keep_the_other_fields_of_each_frame() -> None:
    dec = KeyFrameDecoder()
    tokens = list(range(5000))
    a = dec.decode(encode_key(make_key("m", tokens, "a", start=16, end=32, worker_id=0)))
    b = dec.decode(encode_key(make_key("m", tokens, "b", start=0, end=4992, worker_id=None, cache_salt="s")))
    assert a is not None and b is not None and dec.hits == 1
    assert a["token_ids"] is b["token_ids"]
    assert (b["request_id"], b["start"], b["end"], b["worker_id"], b["cache_salt"]) == ("b", 0, 4992, None, "s")


def test_the_client_reuses_frames_of_the_same_key_and_never_mixes_keys_up() -> None:
    from lmcache_frontends.client import LMCacheClient

    def sent(frame: Any) -> dict[str, Any]:
        wire = encode(frame)  # what the client hands to the socket
        assert decode(bytes(wire)) == decode(wire)
        return decode(bytes(wire))  # type: ignore[no-any-return]

    client = LMCacheClient("tcp://127.0.0.1:1")  # never connects: frames only
    try:
        tokens = list(range(3000))
        key = make_key("m", tokens, "r")
        first = client._key_frame(key, None)
        assert client._key_frame(key, None) is first  # a repeat: the very same frame
        assert bytes(encode(first)) == encode_key(key)  # byte for byte what encode_key writes
        ranked = client._key_frame(key, 0)  # the same tokens, copied from the first frame
        assert bytes(encode(ranked)) == encode_key(make_key("m", tokens, "r", worker_id=0))
        assert sent(ranked)["worker_id"] == 0 and sent(first)["worker_id"] is None
        # Equal tokens in another object, another request id or other tokens: their own frames.
        again = make_key("m", list(tokens), "r2", end=16 * 100)
        assert sent(client._key_frame(again, None)) == decode(encode_key(again))
        other = make_key("m", [t + 1 for t in tokens], "r")
        assert sent(client._key_frame(other, None))["token_ids"] == [t + 1 for t in tokens]
        # Bounded: many keys later the first key still encodes correctly.
        for i in range(40):
            client._key_frame(make_key("m", [i] * 300, f"x{i}"), None)
        assert bytes(encode(client._key_frame(key, None))) == encode_key(key)
        assert len(client._token_arrays) <= 16
    finally:
        client.close()
