"""Which protocol a client speaks, recognised per ZeroMQ identity from its own messages.

LMCache 0.5.0 and 0.5.6 clients send the same framing ([uid, op, *payloads], msgpack, uid a
counter from 0) and no hello. The op numbers differ (0.5.0 numbers by enum order, 0.5.6 by a
frozen table plus string names), so almost every (op, payload count) pair belongs to one version
only. The rule, applied to each message of a client not yet recognised:

1. A string op, or an empty op frame (stream control), is 0.5.6.
2. An (op number, payload count) pair that exists in one version's table decides for it: real
   clients open with GET_CHUNK_SIZE, which is (18, 0) in 0.5.0 and (21, 0) in 0.5.6.
3. Three pairs exist in both with different meanings and are decided by content:
   (1, 7) register_kv_cache: a pickled tensor handle (0.5.0) or a msgpack descriptor (0.5.6);
   (16, 2) COMMIT_RETRIEVE / prepare_store: the key map has 8 fields (0.5.0) or 10 (0.5.6);
   (31, 1) CB_UNREGISTER_ROPE_V3 / p2p_unlock_objects: an int (0.5.0) or an array (0.5.6).
4. Two pairs stay ambiguous and are answered without deciding, in a form both clients accept:
   (2, 1) UNREGISTER_KV_CACHE is the same request with the same empty reply in both; (21, 0) is
   0.5.0's NOOP (reply: any str) and 0.5.6's get_chunk_size (reply: int, which 0.5.6 decodes with
   `int(value)`), so it is answered with the chunk size as a decimal string ("256").
5. Anything else (an int op neither version has) is unknown: logged, and dropped (no codec can
   address a reply the client would accept).

Once recognised, a client's version never changes; `--protocol 0.5.0|0.5.6` skips recognition.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from lmcache_frontends.zmq import codec_v050, codec_v056
from lmcache_frontends.zmq.codec import (
    Envelope,
    Frames,
    WireCodec,
    WireError,
    decode_op,
    no_reply,
    reply,
)
from lmcache_frontends.zmq.codec_v050 import CodecV050
from lmcache_frontends.zmq.codec_v056 import CodecV056
from lmcache_frontends.zmq.fastkey import KeyFrameDecoder
from lmcache_frontends.zmq.requests import GetChunkSize, UnregisterKVCache

log = logging.getLogger(__name__)

V050 = codec_v050.VERSION
V056 = codec_v056.VERSION
PROTOCOL_CHOICES = ("auto", V050, V056)
DEFAULT_MAX_CLIENTS = 1 << 16

_PICKLE_PROTO = 0x80  # every pickle of protocol >= 2 starts with PROTO
_KEY_MAP_HEADERS = {0x88: V050, 0x8A: V056}  # fixmap of 8 fields (0.5.0) / 10 fields (0.5.6)


def _pairs_050() -> set[tuple[int, int]]:
    return set(codec_v050.PAYLOADS.items())


def _pairs_056() -> set[tuple[int, int]]:
    return {(number, codec_v056.OPERATIONS[name].payloads) for name, number in codec_v056.LEGACY_OPERATION_IDS.items()}


PAIRS = {V050: frozenset(_pairs_050()), V056: frozenset(_pairs_056())}
SHARED_PAIRS = PAIRS[V050] & PAIRS[V056]
"""(op, payload count) pairs both versions use: decided by content, or served as ambiguous."""


def _by_content(op: int, payloads: Sequence[bytes]) -> str | None:
    """The version a shared (op, count) message belongs to, from its payloads; None if neither."""
    try:
        if op == 1:
            handles = msgpack.unpackb(payloads[1], raw=False)
            first = handles[0] if isinstance(handles, list) and handles else None
            if isinstance(first, msgpack.ExtType) and first.data:
                return V050 if first.data[0] == _PICKLE_PROTO else V056
            return None
        if op == 16:
            return _KEY_MAP_HEADERS.get(payloads[0][0]) if payloads[0] else None
        if op == 31:
            value = msgpack.unpackb(payloads[0], raw=False)
            return V050 if isinstance(value, int) and not isinstance(value, bool) else V056 if isinstance(value, list) else None
    except Exception:
        return None
    return None


class AmbiguousCodec:
    """Serves the two messages both versions send with one meaning each version accepts the reply
    of: (2, 1) unregister_kv_cache and (21, 0) NOOP / get_chunk_size (see the module docstring)."""

    version = "ambiguous"

    def operation(self, frames: Sequence[bytes]) -> str | None:
        if len(frames) == 2 and frames[1] == b"\x15":
            return "get_chunk_size"
        if len(frames) == 3 and frames[1] == b"\x02":
            return "unregister_kv_cache"
        return None

    def decode(self, frames: Sequence[bytes]) -> Envelope:
        uid, op = frames[0], frames[1]
        if op == b"\x15" and len(frames) == 2:
            return Envelope(uid, op, "get_chunk_size", GetChunkSize())
        if op == b"\x02" and len(frames) == 3:
            value = msgpack.unpackb(frames[2], raw=False)
            if isinstance(value, bool) or not isinstance(value, int):
                raise WireError("unregister_kv_cache: instance_id must be an integer", uid, op, "unregister_kv_cache")
            return Envelope(uid, op, "unregister_kv_cache", UnregisterKVCache(value))
        raise WireError("not an ambiguous message", uid, op)

    def encode(self, envelope: Envelope, result: Any) -> list[Frames]:
        if no_reply(result):
            return []
        if isinstance(envelope.request, GetChunkSize):
            # 0.5.0 NOOP wants a str, 0.5.6 get_chunk_size int(value): "256" satisfies both.
            return [reply(envelope.uid, envelope.op, str(int(result)), has_response=True)]
        return [[envelope.uid, envelope.op]]

    def failure(self, envelope: Envelope) -> list[Frames]:
        return [] if isinstance(envelope.request, GetChunkSize) else [[envelope.uid, envelope.op]]

    def error(self, error: WireError) -> list[Frames]:
        return []


@dataclass(frozen=True, slots=True)
class Detection:
    """The codec for one message (None: unknown, drop it) and why; `decided` when this message
    settled the client's version."""

    codec: WireCodec | None
    reason: str
    decided: bool = False


class ProtocolDetector:
    """Per-identity protocol recognition (a bounded LRU of identities: a forgotten client is simply
    recognised again from its next message). `forced` ("0.5.0" / "0.5.6") skips recognition."""

    def __init__(
        self, forced: str = "auto", *, key_decoder: KeyFrameDecoder | None = None, max_clients: int = DEFAULT_MAX_CLIENTS
    ) -> None:
        if forced not in PROTOCOL_CHOICES:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_CHOICES)}, not {forced!r}")
        keys = key_decoder if key_decoder is not None else KeyFrameDecoder()
        self.codecs: dict[str, WireCodec] = {V050: CodecV050(keys), V056: CodecV056(keys)}
        self.ambiguous = AmbiguousCodec()
        self.forced = forced
        self._max = max(1, int(max_clients))
        self._clients: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    def version_of(self, identity: bytes) -> str | None:
        """The version a client was recognised as (None: not yet)."""
        if self.forced != "auto":
            return self.forced
        with self._lock:
            return self._clients.get(identity)

    def counts(self) -> dict[str, int]:
        """Recognised clients per version (for /status)."""
        with self._lock:
            out = {V050: 0, V056: 0}
            for version in self._clients.values():
                out[version] += 1
            return out

    def detect(self, identity: bytes, frames: Sequence[bytes]) -> Detection:
        """The codec for `frames` ([uid, op, *payloads]) from `identity`."""
        if self.forced != "auto":
            return Detection(self.codecs[self.forced], f"--protocol {self.forced}")
        with self._lock:
            known = self._clients.get(identity)
            if known is not None:
                self._clients.move_to_end(identity)
                return Detection(self.codecs[known], "recognised earlier")
        version, reason = self.classify(frames)
        if version is None:
            return Detection(None, reason)
        if version == "ambiguous":
            return Detection(self.ambiguous, reason)
        with self._lock:
            self._clients[identity] = version
            self._clients.move_to_end(identity)
            while len(self._clients) > self._max:
                self._clients.popitem(last=False)
        log.info("client %s speaks LMCache %s (%s)", identity.hex(), version, reason)
        return Detection(self.codecs[version], reason, decided=True)

    @staticmethod
    def classify(frames: Sequence[bytes]) -> tuple[str | None, str]:
        """(version | "ambiguous" | None, why) of one message taken on its own."""
        if len(frames) < 2:
            return None, f"{len(frames)} frame(s): no uid and operation"
        if frames[1] == b"":
            return V056, "stream control frame"
        try:
            op = decode_op(frames[1])
        except WireError as exc:
            return None, exc.problem
        if isinstance(op, str):
            return V056, f"operation named {op!r}"
        pair = (op, len(frames) - 2)
        in_050, in_056 = pair in PAIRS[V050], pair in PAIRS[V056]
        if in_050 and not in_056:
            return V050, f"op {op} with {pair[1]} payload(s) exists only in 0.5.0"
        if in_056 and not in_050:
            return V056, f"op {op} with {pair[1]} payload(s) exists only in 0.5.6"
        if not in_050:
            return None, f"op {op} with {pair[1]} payload(s) is in neither protocol"
        if pair in ((2, 1), (21, 0)):
            return "ambiguous", f"op {op} with {pair[1]} payload(s) means the same to both"
        version = _by_content(op, frames[2:])
        if version is None:
            return None, f"op {op} with {pair[1]} payload(s) is ambiguous and its payload does not tell"
        return version, f"op {op} decided by its payload"
