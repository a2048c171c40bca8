"""The serde wrapper: an L2 adapter that transforms payloads (compress, down-cast) around another.

Each stored blob is `[serde header: magic, codec id, original length][codec payload]`; a load
decodes into the caller's buffer, which must have the original length. The inner adapter needs a
load buffer of the blob's exact length: the wrapper remembers the lengths it stored and, for keys it
did not store in this process (after a restart), asks the inner adapter's optional
`stored_nbytes(keys)` (the `fs` adapter has it); a key whose length nobody knows is a miss.

Codecs: `zstd` (lossless, `level`), `zlib` (lossless, stdlib, `level`), `fp8` (lossy: bf16/fp16 KV
down-cast to float8_e4m3fn with one float32 scale per object; `dtype` required).

The header's codec id names the codec of each blob. A blob written by `submit_recode` (behind
`lmcache kvcache compress`) also sets the RECODED flag in the header's flags byte (0 in every
other blob, as before): a load decodes such a blob with the codec its header names (one used by
a recode in this process, or a lossless codec rebuilt from its id), so one wrapper can hold blobs
of several codecs. Any other blob must carry the configured codec's id. A blob nobody can decode
is a miss, never raw or wrongly decoded bytes.
"""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, cast

from lmcache_core.errors import ConfigError, NotInitializedError
from lmcache_core.keys import ObjectKey
from lmcache_core.ports import (
    KeyPage,
    KnowsStoredSizes,
    L2Adapter,
    L2Usage,
    NamesItsType,
    ProbesBackend,
    capability_of,
)
from lmcache_core.status import compose_status

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Cap = TypeVar("_Cap")

_MAGIC = b"LS"
# magic(2) | codec id(u8) | flags(u8, was reserved: always 0 before RECODED) | original length(u64)
_HEAD = struct.Struct(">2sBBQ")
_FLAG_RECODED = 0x01
# In a RECODED fp8 blob, bits 1-2 of the flags name the original dtype, so it decodes anywhere.
_FP8_DTYPE_BITS = {"bfloat16": 0x02, "float16": 0x04}
_FP8_DTYPE_MASK = 0x06
SERDE_HEADER_SIZE = _HEAD.size  # 12


class SerdeError(ValueError):
    """A blob cannot be decoded (wrong codec, bad framing, corrupt codec payload)."""


class Codec(Protocol):
    """One payload transform; `decode_into` fills `out` exactly or raises."""

    name: str
    codec_id: int
    lossless: bool

    def encode(self, payload: memoryview) -> bytes: ...

    def decode_into(self, data: memoryview, out: memoryview) -> None: ...

    def describe(self) -> dict[str, Any]: ...


class ZstdCodec:
    """Lossless zstandard compression (needs the `zstandard` package)."""

    name = "zstd"
    codec_id = 1
    lossless = True

    def __init__(self, level: int = 3) -> None:
        try:
            import zstandard
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigError(
                "serde codec 'zstd' needs the zstandard package: pip install zstandard (or use codec 'zlib')"
            ) from None
        self._zstd = zstandard
        self.level = level
        self._local = threading.local()  # zstd contexts must not be shared between threads

    def _contexts(self) -> tuple[Any, Any]:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = (self._zstd.ZstdCompressor(level=self.level), self._zstd.ZstdDecompressor())
            self._local.ctx = ctx
        return ctx

    def encode(self, payload: memoryview) -> bytes:
        return bytes(self._contexts()[0].compress(payload))

    def decode_into(self, data: memoryview, out: memoryview) -> None:
        try:
            raw = self._contexts()[1].decompress(data, max_output_size=out.nbytes)
        except self._zstd.ZstdError as exc:
            raise SerdeError(f"zstd: {exc}") from None
        if len(raw) != out.nbytes:
            raise SerdeError(f"zstd: decoded {len(raw)} bytes, expected {out.nbytes}")
        out[:] = raw

    def describe(self) -> dict[str, Any]:
        return {"codec": self.name, "lossless": True, "level": self.level}


class ZlibCodec:
    """Lossless DEFLATE from the standard library (slower than zstd, always available)."""

    name = "zlib"
    codec_id = 2
    lossless = True

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def encode(self, payload: memoryview) -> bytes:
        return zlib.compress(payload, self.level)

    def decode_into(self, data: memoryview, out: memoryview) -> None:
        try:
            d = zlib.decompressobj()
            raw = d.decompress(data, out.nbytes)
            if d.unconsumed_tail or not d.eof:
                raise SerdeError("zlib: stream longer than the original length or truncated")
        except zlib.error as exc:
            raise SerdeError(f"zlib: {exc}") from None
        if len(raw) != out.nbytes:
            raise SerdeError(f"zlib: decoded {len(raw)} bytes, expected {out.nbytes}")
        out[:] = raw

    def describe(self) -> dict[str, Any]:
        return {"codec": self.name, "lossless": True, "level": self.level}


class Fp8Codec:
    """Lossy down-cast of bf16/fp16 KV to float8_e4m3fn with one float32 scale per object."""

    name = "fp8"
    codec_id = 3
    lossless = False
    _FP8_MAX = 448.0  # largest finite float8_e4m3fn

    def __init__(self, dtype: str) -> None:
        import torch

        self._torch = torch
        self.dtype_name = dtype
        self._dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        self._fp8 = torch.float8_e4m3fn

    def encode(self, payload: memoryview) -> bytes:
        torch = self._torch
        if payload.nbytes % 2:
            raise SerdeError(
                f"fp8: payload of {payload.nbytes} bytes is not a whole number of {self.dtype_name}"
            )
        values = torch.frombuffer(bytearray(payload), dtype=self._dtype).float()
        amax = float(values.abs().max()) if values.numel() else 0.0
        if amax != amax or amax == float("inf"):
            raise SerdeError("fp8: payload holds non-finite values")
        scale = amax / self._FP8_MAX if amax > 0 else 1.0
        quantised = (values / scale).to(self._fp8)
        body: bytes = quantised.view(torch.uint8).numpy().tobytes()
        return struct.pack(">f", scale) + body

    def decode_into(self, data: memoryview, out: memoryview) -> None:
        torch = self._torch
        if data.nbytes < 4 or (data.nbytes - 4) * 2 != out.nbytes:
            raise SerdeError(
                f"fp8: {data.nbytes} encoded bytes do not match {out.nbytes} output bytes"
            )
        (scale,) = struct.unpack_from(">f", data, 0)
        q = torch.frombuffer(bytearray(data[4:]), dtype=torch.uint8).view(self._fp8)
        restored = (q.float() * scale).to(self._dtype)
        out[:] = restored.view(torch.uint8).numpy().tobytes()

    def describe(self) -> dict[str, Any]:
        return {
            "codec": self.name,
            "lossless": False,
            "dtype": self.dtype_name,
            "format": "float8_e4m3fn",
        }


CODECS = ("fp8", "zlib", "zstd")
_LOSSLESS_BY_ID: dict[int, Callable[[], Codec]] = {ZstdCodec.codec_id: ZstdCodec, ZlibCodec.codec_id: ZlibCodec}


class SerdeL2Adapter:
    """Wraps any L2Adapter, encoding payloads on the way down and decoding them on the way back."""

    def __init__(self, inner: L2Adapter, codec: Codec, *, max_workers: int = 2) -> None:
        self.inner = inner
        self.codec = codec
        self.kind = inner.kind
        self._lengths: dict[
            ObjectKey, int
        ] = {}  # stored blob length, for keys stored by this process
        # Codecs other than the configured one that blobs of this wrapper may carry, by id.
        self._extra_codecs: dict[int, Codec] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._encode_failures = 0
        self._decode_failures = 0
        self._bytes_in = 0
        self._bytes_out = 0
        self._pool = ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=f"l2-serde-{codec.name}"
        )

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, fn: Callable[[], None], out: Future[Any]) -> None:
        """Run `fn` on the wrapper's pool; a failure anywhere completes `out` with the exception."""

        def guarded() -> None:
            try:
                fn()
            except BaseException as exc:  # every path must complete `out`, or a caller hangs
                if not out.done():
                    out.set_exception(exc)

        def cancelled(task: Future[None]) -> None:
            if task.cancelled() and not out.done():  # close() dropped the queued task
                out.set_exception(NotInitializedError("serde L2 wrapper is closed"))

        try:
            self._pool.submit(guarded).add_done_callback(cancelled)
        except RuntimeError:  # closed under us
            if not out.done():
                out.set_exception(NotInitializedError("serde L2 wrapper is closed"))

    def _then(self, inner: Future[_T], fn: Callable[[_T], None], out: Future[Any]) -> None:
        """When `inner` completes, run `fn(result)` on the wrapper's pool (not the inner's threads)."""

        def done(f: Future[_T]) -> None:
            if out.done():
                return
            if f.cancelled():
                out.set_exception(NotInitializedError("inner L2 operation was cancelled"))
                return
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
                return
            self._spawn(lambda: fn(f.result()), out)

        inner.add_done_callback(done)

    def _closed_future(self) -> Future[list[bool]] | None:
        if not self._closed:
            return None
        out: Future[list[bool]] = Future()
        out.set_exception(NotInitializedError("serde L2 wrapper is closed"))
        return out

    def _known_lengths(self, keys: Sequence[ObjectKey]) -> list[int | None]:
        with self._lock:
            lengths: list[int | None] = [self._lengths.get(k) for k in keys]
        missing = [i for i, n in enumerate(lengths) if n is None]
        sizes = capability_of(self.inner, KnowsStoredSizes)
        if missing and sizes is not None:
            answers = sizes.stored_nbytes([keys[i] for i in missing])
            for i, n in zip(missing, answers, strict=True):
                lengths[i] = n
        return lengths

    # ------------------------------------------------------------------ store

    def submit_store(
        self, keys: Sequence[ObjectKey], payloads: Sequence[memoryview]
    ) -> Future[list[bool]]:
        return self._store(keys, payloads, self.codec, 0)

    def _store(
        self, keys: Sequence[ObjectKey], payloads: Sequence[memoryview], codec: Codec, flags: int
    ) -> Future[list[bool]]:
        if len(keys) != len(payloads):
            raise ValueError(f"{len(keys)} keys but {len(payloads)} payloads")
        closed = self._closed_future()
        if closed is not None:
            return closed
        keys, payloads = list(keys), list(payloads)
        out: Future[list[bool]] = Future()

        def encode() -> None:
            blobs: list[bytes | None] = []
            for key, payload in zip(keys, payloads, strict=True):
                view = memoryview(payload).cast("B")
                try:
                    body = codec.encode(view)
                except Exception as exc:  # one bad payload fails its key, not the batch
                    log.warning("serde %s: encoding %r failed: %s", codec.name, key, exc)
                    with self._lock:
                        self._encode_failures += 1
                    blobs.append(None)
                    continue
                blobs.append(_HEAD.pack(_MAGIC, codec.codec_id, flags, view.nbytes) + body)
                with self._lock:
                    self._bytes_in += view.nbytes
                    self._bytes_out += SERDE_HEADER_SIZE + len(body)
            todo = [i for i, b in enumerate(blobs) if b is not None]
            if not todo:
                out.set_result([False] * len(keys))
                return
            inner = self.inner.submit_store(
                [keys[i] for i in todo],
                [memoryview(blobs[i]) for i in todo],  # type: ignore[arg-type]
            )

            def stored(results: list[bool]) -> None:
                final = [False] * len(keys)
                with self._lock:
                    for i, ok in zip(todo, results, strict=True):
                        final[i] = ok
                        if ok:
                            self._lengths[keys[i]] = len(blobs[i])  # type: ignore[arg-type]
                out.set_result(final)

            self._then(inner, stored, out)

        self._spawn(encode, out)
        return out

    # ------------------------------------------------------------------ lookup / load

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        closed = self._closed_future()
        if closed is not None:
            return closed
        keys = list(keys)
        out: Future[list[bool]] = Future()

        def checked(hits: list[bool]) -> None:
            lengths = self._known_lengths([k for k, h in zip(keys, hits, strict=True) if h])
            it = iter(lengths)
            final = [h and next(it) is not None for h in hits]
            # a hit whose length is unknown cannot be loaded: report a miss and release its lock
            unloadable = [k for k, h, f in zip(keys, hits, final, strict=True) if h and not f]
            if unloadable:
                self.inner.unlock(unloadable)
            out.set_result(final)

        self._then(self.inner.submit_lookup_and_lock(keys), checked, out)
        return out

    def submit_load(
        self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]
    ) -> Future[list[bool]]:
        if len(keys) != len(buffers):
            raise ValueError(f"{len(keys)} keys but {len(buffers)} buffers")
        closed = self._closed_future()
        if closed is not None:
            return closed
        keys, buffers = list(keys), list(buffers)
        out: Future[list[bool]] = Future()

        def start() -> None:
            lengths = self._known_lengths(keys)
            todo = [i for i, n in enumerate(lengths) if n is not None and n >= SERDE_HEADER_SIZE]
            if not todo:
                out.set_result([False] * len(keys))
                return
            scratch = {i: bytearray(lengths[i]) for i in todo}  # type: ignore[arg-type]
            inner = self.inner.submit_load(
                [keys[i] for i in todo], [memoryview(scratch[i]) for i in todo]
            )

            def decode(results: list[bool]) -> None:
                final = [False] * len(keys)
                for i, ok in zip(todo, results, strict=True):
                    if ok:
                        final[i] = self._decode(keys[i], memoryview(scratch[i]), buffers[i])
                out.set_result(final)

            self._then(inner, decode, out)

        self._spawn(start, out)
        return out

    def _decode(self, key: ObjectKey, blob: memoryview, buffer: memoryview) -> bool:
        try:
            target = memoryview(buffer).cast("B")
        except TypeError:
            return False
        magic, codec_id, flags, length = _HEAD.unpack_from(blob, 0)
        if length != target.nbytes:
            return False  # the caller's buffer is the wrong size; the object is fine
        try:
            if magic != _MAGIC:
                codec = None
            elif flags & _FLAG_RECODED:
                codec = self._codec_for(codec_id, flags)
            else:
                codec = self.codec if codec_id == self.codec.codec_id else None
            if codec is None:
                raise SerdeError(f"blob is not framed by a codec this wrapper can decode (id {codec_id})")
            codec.decode_into(blob[SERDE_HEADER_SIZE:], target)
        except SerdeError as exc:
            log.warning("serde %s: decoding %r failed: %s", self.codec.name, key, exc)
            with self._lock:
                self._decode_failures += 1
            return False
        return True

    # ------------------------------------------------------------------ codecs / recode

    def _codec_for(self, codec_id: int, flags: int) -> Codec | None:
        """The codec that decodes RECODED blobs framed with `codec_id` and `flags`, or None."""
        if codec_id == Fp8Codec.codec_id:
            dtype = next((d for d, bits in _FP8_DTYPE_BITS.items() if bits == flags & _FP8_DTYPE_MASK), None)
            if dtype is None:
                return None
            for candidate in (self.codec, self._extra_codecs.get(codec_id)):
                if isinstance(candidate, Fp8Codec) and candidate.dtype_name == dtype:
                    return candidate
            return Fp8Codec(dtype)
        if codec_id == self.codec.codec_id:
            return self.codec
        with self._lock:
            codec = self._extra_codecs.get(codec_id)
        if codec is None and codec_id in _LOSSLESS_BY_ID:
            # Lossless decoding needs no parameters: blobs recoded before a restart stay readable.
            try:
                codec = _LOSSLESS_BY_ID[codec_id]()
            except ConfigError:
                return None
            with self._lock:
                codec = self._extra_codecs.setdefault(codec_id, codec)
        return codec

    def can_hold(self, codec: Codec) -> str | None:
        """None when blobs of `codec` can live next to this wrapper's others (each still decodes
        with the codec that wrote it), else why not."""
        if codec.lossless:
            return None
        if isinstance(codec, Fp8Codec) and codec.dtype_name in _FP8_DTYPE_BITS:
            return None
        return f"codec {codec.name!r} cannot be named per object in the serde header"

    def submit_recode(
        self, keys: Sequence[ObjectKey], codec: Codec
    ) -> Future[list[tuple[int, int] | None]]:
        """Re-store stored objects framed by `codec`: load each blob, decode it with the codec its
        header names, encode with `codec`, store. Per key: (blob bytes before, after), or None
        when the key is missing or failed (its old blob is then left as it was). ValueError when
        `can_hold(codec)` refuses."""
        reason = self.can_hold(codec)
        if reason is not None:
            raise ValueError(reason)
        keys = list(keys)
        out: Future[list[tuple[int, int] | None]] = Future()
        if self._closed:
            out.set_exception(NotInitializedError("serde L2 wrapper is closed"))
            return out
        if codec.codec_id != self.codec.codec_id:
            with self._lock:
                self._extra_codecs[codec.codec_id] = codec

        def start() -> None:
            lengths = self._known_lengths(keys)
            todo = [i for i, n in enumerate(lengths) if n is not None and n >= SERDE_HEADER_SIZE]
            if not todo:
                out.set_result([None] * len(keys))
                return
            scratch = {i: bytearray(lengths[i]) for i in todo}  # type: ignore[arg-type]
            loaded = self.inner.submit_load([keys[i] for i in todo], [memoryview(scratch[i]) for i in todo])

            def reencode(results: list[bool]) -> None:
                raw: dict[int, bytearray] = {}
                for i, ok in zip(todo, results, strict=True):
                    if not ok:
                        continue
                    blob = memoryview(scratch[i])
                    original = bytearray(_HEAD.unpack_from(blob, 0)[3])
                    if self._decode(keys[i], blob, memoryview(original)):
                        raw[i] = original
                if not raw:
                    out.set_result([None] * len(keys))
                    return
                order = sorted(raw)
                flags = _FLAG_RECODED
                if isinstance(codec, Fp8Codec):
                    flags |= _FP8_DTYPE_BITS[codec.dtype_name]
                stored = self._store([keys[i] for i in order], [memoryview(raw[i]) for i in order], codec, flags)

                def report(results: list[bool]) -> None:
                    with self._lock:
                        after = {i: self._lengths.get(keys[i]) for i, ok in zip(order, results, strict=True) if ok}
                    final: list[tuple[int, int] | None] = [None] * len(keys)
                    for i, n in after.items():
                        if n is not None:
                            final[i] = (len(scratch[i]), n)
                    out.set_result(final)

                self._then(stored, report, out)

            self._then(loaded, reencode, out)

        self._spawn(start, out)
        return out

    # ------------------------------------------------------------------ passthrough

    def unlock(self, keys: Sequence[ObjectKey]) -> None:
        self.inner.unlock(keys)

    def delete(self, keys: Sequence[ObjectKey]) -> list[bool]:
        removed = self.inner.delete(keys)
        with self._lock:
            for key, ok in zip(keys, removed, strict=True):
                if ok:
                    self._lengths.pop(key, None)
        return removed

    def list_keys(
        self,
        page_size: int,
        page_token: str | None = None,
        *,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> KeyPage:
        return self.inner.list_keys(
            page_size, page_token, model_name=model_name, cache_salt=cache_salt
        )

    def usage(self) -> L2Usage:
        """The inner adapter's usage: bytes as stored (after encoding)."""
        return self.inner.usage()

    def probe(self) -> None:
        """The wrapped adapter's probe (nothing to check when it has none)."""
        prober = capability_of(self.inner, ProbesBackend)
        if prober is not None:
            prober.probe()

    @property
    def type_name(self) -> str:
        """The wrapped adapter's class: /l2/adapters shows what stores the bytes."""
        if isinstance(self.inner, NamesItsType):
            return self.inner.type_name
        return type(self.inner).__name__

    def capability(self, protocol: type[_Cap]) -> _Cap | None:
        """Probing and recoding are this wrapper's; anything else (reconfiguration, device
        ownership) is the wrapped adapter's. Stored sizes are not forwarded: the inner sizes
        are of encoded blobs, not of what a caller loads."""
        if protocol is ProbesBackend:
            return cast(_Cap, self) if capability_of(self.inner, ProbesBackend) is not None else None
        if protocol is KnowsStoredSizes:
            return None
        if isinstance(self, protocol):
            return self
        return capability_of(self.inner, protocol)

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            serde = {
                **self.codec.describe(),
                "encode_failures": self._encode_failures,
                "decode_failures": self._decode_failures,
                "bytes_in": self._bytes_in,
                "bytes_out": self._bytes_out,
                "ratio": round(self._bytes_in / self._bytes_out, 3) if self._bytes_out else None,
            }
        return compose_status(
            {"kind": self.kind, "serde": serde, "closed": self._closed},
            {"inner": self.inner},
            healthy=not self._closed,
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.inner.close()  # completes the inner futures, whose callbacks then finish ours
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------- factory


def make_codec(serde_config: dict[str, Any]) -> Codec:
    """Build a codec from `{"type": "zstd"|"zlib"|"fp8", ...}`; ConfigError names the bad field."""
    if not isinstance(serde_config, dict):
        raise ConfigError('field \'serde\' must be an object such as {"type": "zstd"}')
    cfg = dict(serde_config)
    codec = cfg.pop("type", None)
    if codec not in CODECS:
        raise ConfigError(f"field 'serde.type' must be one of {', '.join(CODECS)}, got {codec!r}")
    accepted = {"zstd": {"level"}, "zlib": {"level"}, "fp8": {"dtype"}}[codec] | {"max_workers"}
    unknown = sorted(set(cfg) - accepted)
    if unknown:
        raise ConfigError(
            f"unknown field(s) for serde codec {codec!r}: {', '.join(unknown)} (accepted: {', '.join(sorted(accepted))})"
        )
    if codec in ("zstd", "zlib"):
        level = cfg.get("level", 3 if codec == "zstd" else 6)
        low, high = (1, 22) if codec == "zstd" else (1, 9)
        if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
            raise ConfigError(
                f"field 'serde.level' for codec {codec!r} must be an integer in {low}..{high}, got {level!r}"
            )
        return ZstdCodec(level) if codec == "zstd" else ZlibCodec(level)
    dtype = cfg.get("dtype")
    if dtype not in ("bfloat16", "float16"):
        raise ConfigError(
            f"field 'serde.dtype' for codec 'fp8' must be \"bfloat16\" or \"float16\", got {dtype!r}"
        )
    return Fp8Codec(dtype)


def wrap_with_serde(adapter: L2Adapter, serde_config: dict[str, Any]) -> SerdeL2Adapter:
    """Wrap `adapter` with the codec `serde_config` describes (the adapter's `serde` field)."""
    codec = make_codec(serde_config)
    workers = serde_config.get("max_workers", 2)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise ConfigError(f"field 'serde.max_workers' must be an integer in 1..64, got {workers!r}")
    return SerdeL2Adapter(adapter, codec, max_workers=workers)
