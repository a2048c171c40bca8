"""Between the transport and the handlers: which protocol, which lane, decode, handle, encode.

For each message the socket thread asks `route`: the client's protocol (`detect.py`, per
identity), the operation from the op frame alone, and from it the lane (transfers on the
client's worker, blocking waits on their own thread, the rest inline). `serve` then runs on that
lane: the frame caps, the codec's decode into a typed request, the handler, the codec's encoding
of the typed result. Every problem gets the reply its protocol defines (docs/protocol.md §5) and a
rate-limited log line, never a crash: a message that does not decode, an unknown operation, a
handler that fails.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Sequence
from typing import Any

from lmcache_adapters.memory.faultguard import SegmentFaultError
from lmcache_core.clients import ClientId
from lmcache_core.errors import InvalidKeyError
from lmcache_core.lookup import token_count
from lmcache_core.oplog import OperationLog
from lmcache_core.ratelimit import LogRateLimiter
from lmcache_frontends.zmq import requests as rq
from lmcache_frontends.zmq.codec import Envelope, WireCodec, WireError
from lmcache_frontends.zmq.detect import ProtocolDetector
from lmcache_frontends.zmq.handlers import DataPathHandlers
from lmcache_frontends.zmq.instances import RequestFailed
from lmcache_frontends.zmq.protocol import ProtocolError
from lmcache_frontends.zmq.transport import Lane, Reply

log = logging.getLogger(__name__)

TRANSFER_OPERATIONS = frozenset(
    {"store", "retrieve", "prepare_store", "commit_store", "prepare_retrieve", "commit_retrieve"}
)
"""Operations that move KV data: on the client's worker thread, in order per client."""
BLOCKING_OPERATIONS = frozenset({"wait_prefetch_status"})
"""Operations that may wait: on their own thread, so the socket thread never does."""
KEY_OPERATIONS = TRANSFER_OPERATIONS | {"lookup", "free_lookup_locks"}
"""Operations whose first payload is a key (capped by its token count before decoding)."""

# Frames of requests served inline (everything but transfers) beyond this are refused before
# decoding, whatever --max-frame-bytes allows: keys are capped by their token count, and a
# registration of a few thousand layers is well below it.
MAX_INLINE_FRAME_BYTES = 16 << 20
# A token id takes at most 5 bytes in msgpack (uint32): what a key of N tokens can occupy.
KEY_FRAME_SLACK_BYTES = 64 << 10
# Failures a client can cause with a bad request: one line, no traceback.
_EXPECTED_FAILURES = (
    ProtocolError, RequestFailed, ValueError, SegmentFaultError, pickle.UnpicklingError, InvalidKeyError,
)


class _Job:
    """One routed message: its codec, its frames (dropped once decoded) and its operation."""

    __slots__ = ("codec", "frames", "operation")

    def __init__(self, codec: WireCodec, frames: list[bytes], operation: str | None) -> None:
        self.codec = codec
        self.frames: list[bytes] | None = frames
        self.operation = operation


def _keys_of(request: rq.Request, chunk_size: int) -> int:
    """How many chunks a request names (for the operation log)."""
    if isinstance(request, rq.KeyRequest):
        key = request.key
        if isinstance(request, rq.Lookup):
            return token_count(key.token_ids) // chunk_size
        return max(0, key.end - key.start) // chunk_size
    return 0


def _succeeded(result: Any) -> bool:
    """Whether a handler's result tells the client "done" (for the operation log)."""
    if isinstance(result, rq.TransferDone):
        return result.ok
    if isinstance(result, rq.RetrieveSlots):
        return result.success
    return result is not False


class DataPathRouter:
    """The transport's `MessageRouter` for the LMCache protocols (both versions at once)."""

    def __init__(
        self,
        detector: ProtocolDetector,
        handlers: DataPathHandlers,
        *,
        chunk_size: int,
        max_frame_bytes: int,
        max_tokens_per_key: int,
        log_limiter: LogRateLimiter,
        oplog: OperationLog | None = None,
    ) -> None:
        self.detector = detector
        self.handlers = handlers
        self.chunk_size = chunk_size
        self.max_frame_bytes = int(max_frame_bytes)
        self.max_key_frame_bytes = 5 * int(max_tokens_per_key) + KEY_FRAME_SLACK_BYTES
        self.oplog = oplog if oplog is not None else OperationLog()
        self._log_limiter = log_limiter
        self.requests_total = 0
        self.dropped_total = 0
        self.failed_total = 0

    # -- on the socket thread ---------------------------------------------------------------

    def route(self, identity: bytes, frames: list[bytes]) -> tuple[Lane, Any] | None:
        self.requests_total += 1
        detection = self.detector.detect(identity, frames)
        codec = detection.codec
        if codec is None:
            # No codec can address a reply the client would accept (docs/protocol.md §5).
            self.dropped_total += 1
            self.log_bad(ClientId(identity), "unrecognised", "dropping a message: %s", detection.reason)
            return None
        operation = codec.operation(frames)
        if operation in TRANSFER_OPERATIONS:
            lane = Lane.TRANSFER
        elif operation in BLOCKING_OPERATIONS:
            lane = Lane.BLOCKING
        else:
            lane = Lane.INLINE
        return lane, _Job(codec, frames, operation)

    # -- on the lane's thread ---------------------------------------------------------------

    def serve(self, identity: bytes, job: _Job) -> Sequence[Reply]:
        client = ClientId(identity)
        codec, frames = job.codec, job.frames
        job.frames = None  # the job no longer keeps the frames: the request does, once decoded
        assert frames is not None
        try:
            self._check_sizes(job.operation, frames)
            envelope = codec.decode(frames)
        except WireError as exc:
            self.failed_total += 1
            self.log_bad(client, ("decode", exc.operation), "refusing a request: %s", exc.problem)
            return codec.error(exc)
        del frames
        # Timed only while the operation log is on: off, the hot path pays one level check.
        started = time.perf_counter() if self.oplog.enabled else None
        try:
            result = self.handlers.handle(client, envelope.request)
        except Exception as exc:
            self.failed_total += 1
            expected = isinstance(exc, _EXPECTED_FAILURES)
            self.log_bad(
                client, (envelope.operation, type(exc).__name__), "%s failed: %s" if expected else "%s failed: %r",
                envelope.operation, exc, exc_info=not expected,
            )
            if started is not None:
                self._record(client, envelope, started, ok=False)
            return codec.failure(envelope)
        if started is not None:
            self._record(client, envelope, started, ok=_succeeded(result))
        return codec.encode(envelope, result)

    def _check_sizes(self, operation: str | None, frames: list[bytes]) -> None:
        """Refuse a frame over its cap before decoding it (payload frames start at index 2)."""
        if operation is None:
            return  # the codec names the unknown operation
        limit = self.max_frame_bytes if operation in TRANSFER_OPERATIONS else MAX_INLINE_FRAME_BYTES
        for i in range(2, len(frames)):
            cap = min(limit, self.max_key_frame_bytes) if i == 2 and operation in KEY_OPERATIONS else limit
            if len(frames[i]) > cap:
                raise WireError(
                    f"{operation} payload {i - 2} is {len(frames[i])} bytes, over the {cap}-byte limit",
                    frames[0], frames[1], operation,
                )

    def _record(self, client: ClientId, envelope: Envelope, started: float, *, ok: bool) -> None:
        request = envelope.request
        fields: dict[str, object] = {}
        if isinstance(request, rq.KeyRequest):
            fields["request_id"] = request.key.request_id
            fields["model_name"] = request.key.model_name
        elif isinstance(request, (rq.QueryPrefetchStatus, rq.WaitPrefetchStatus, rq.EndSession)):
            fields["request_id"] = request.request_id
        instance = getattr(request, "instance_id", None)
        if instance is not None:
            fields["instance"] = instance
        self.oplog.record(
            envelope.operation.upper(), client=client.hex() or "-", keys=_keys_of(request, self.chunk_size),
            duration_s=time.perf_counter() - started, ok=ok, **fields,
        )

    def log_bad(self, client: ClientId, reason: Any, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log a bad request at most once per client and reason every few seconds, with the
        number of like lines held back since."""
        emit, held = self._log_limiter.allow((client, reason))
        if not emit:
            return
        who = client.hex() or "-"
        suffix = f" [client {who}; {held} similar lines suppressed]" if held else f" [client {who}]"
        log.warning(message + suffix, *args, exc_info=exc_info)
