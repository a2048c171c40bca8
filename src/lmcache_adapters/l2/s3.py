"""S3L2Adapter: an L2 tier in any S3-compatible object store (boto3).

`S3Backend` does the requests; the standard L2 stack adds the thread pool, the key locks, the
metrics and the circuit breaker (configured by this kind's `circuit_breaker_*` fields)."""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from lmcache_adapters.l2.breaker import BreakerSettings
from lmcache_adapters.l2.integrity import HEADER_SIZE, IntegrityError, frame, unframe
from lmcache_adapters.l2.stack import BackendL2Adapter, StackContext
from lmcache_core.errors import (
    BackendUnavailableError,
    BackendUnreachableError,
    ConfigError,
    InvalidKeyError,
)
from lmcache_core.keys import ObjectKey
from lmcache_core.plugin.registry import ConfigField, config_field
from lmcache_core.ports import Clock, KeyPage, L2Usage, MetricsSink, ProbesBackend, capability_of

log = logging.getLogger(__name__)

T = TypeVar("T")

DELETE_BATCH = 1000  # the DeleteObjects limit
LIST_BATCH = 1000  # the ListObjectsV2 limit
MAX_LIST_REQUESTS = 32  # per list_keys call: a heavily filtered listing returns a short page, never hangs
_TOKEN_PREFIX = "s3v1:"

S3_FIELDS: Mapping[str, ConfigField] = {
    "bucket": config_field(str, required=True, help="bucket name"),
    "endpoint_url": config_field(str, help="any S3-compatible endpoint, e.g. http://minio:9000 (default: AWS)"),
    "prefix": config_field(str, help='object name prefix, e.g. "lmcache/" (default "")'),
    "region": config_field(str, help='region name (default "us-east-1")'),
    "aws_access_key_id": config_field(str, help="access key id (default: the standard credential chain)"),
    "aws_secret_access_key": config_field(str, help="secret access key (with aws_access_key_id)"),
    "aws_session_token": config_field(str, help="session token for temporary credentials"),
    "addressing_style": config_field(str, help='"auto" (default), "path" or "virtual"'),
    "max_workers": config_field(int, help="threads (and HTTP connections) for S3 requests (default 8)"),
    "connect_timeout": config_field(float, help="seconds to establish a connection (default 5)"),
    "read_timeout": config_field(float, help="seconds to wait for data on a connection (default 30)"),
    "max_attempts": config_field(int, help="attempts per request including the first (default 2)"),
    "create_bucket": config_field(bool, help="create the bucket on start when missing (default false)"),
    "circuit_breaker_threshold": config_field(
        int, help="consecutive connection failures that open the circuit (default 5)"
    ),
    "circuit_breaker_backoff_seconds": config_field(
        float, help="seconds the circuit stays open before a probe; doubles on each failed probe (default 5)"
    ),
    "circuit_breaker_max_backoff_seconds": config_field(float, help="cap of the doubling back-off (default 60)"),
    "capacity_bytes": config_field(int, help="refuse stores beyond this many bytes (default: unbounded)"),
}

S3UnavailableError = BackendUnreachableError
"""The S3 endpoint cannot be reached (connection failure, or the circuit breaker is open)."""


_loader_lock = threading.Lock()
_loader: Any = None


def _shared_loader() -> Any:
    """One botocore data loader per process: it caches the parsed S3 service model, which makes
    creating an adapter take ~0.1 s instead of ~0.6 s."""
    global _loader
    with _loader_lock:
        if _loader is None:
            from botocore.loaders import create_loader

            _loader = create_loader()
        return _loader


def _as_bytes_view(buf: memoryview) -> memoryview:
    """A flat unsigned-byte view of `buf`, so a payload can be copied into any contiguous buffer."""
    if buf.format == "B" and buf.ndim == 1:
        return buf
    return buf.cast("B")


def _encode_token(name: str) -> str:
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(name.encode()).decode("ascii")


def _decode_token(token: str) -> str:
    if not isinstance(token, str) or not token.startswith(_TOKEN_PREFIX):
        raise ValueError("invalid page_token for the s3 adapter")
    try:
        return base64.urlsafe_b64decode(token[len(_TOKEN_PREFIX) :].encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError("invalid page_token for the s3 adapter") from None


def _redact_url(url: str | None) -> str | None:
    """`url` without any `user:password@` part, for status and logs."""
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _escaped_model(model_name: str) -> str:
    # the model segment of a storage name (see ObjectKey.to_storage_name)
    return model_name.replace("%", "%25").replace("/", "%2F")


class S3Backend:
    """Storage backend in an S3-compatible bucket: one integrity-framed object per key; sizes
    and usage tracked locally (rebuilt by a background scan of the prefix on start)."""

    kind = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        prefix: str = "",
        region: str = "us-east-1",
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        addressing_style: str = "auto",
        max_workers: int = 8,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 2,
        create_bucket: bool = False,
        capacity_bytes: int | None = None,
        scan_on_start: bool = True,
    ) -> None:
        _validate(
            bucket=bucket,
            endpoint_url=endpoint_url,
            prefix=prefix,
            region=region,
            addressing_style=addressing_style,
            max_workers=max_workers,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_attempts=max_attempts,
            capacity_bytes=capacity_bytes,
        )
        if (aws_access_key_id is None) != (aws_secret_access_key is None):
            raise ConfigError(
                "s3 adapter fields 'aws_access_key_id' and 'aws_secret_access_key' must be given together"
            )
        try:
            import boto3  # noqa: F401  (the extra we ask for; the client itself is botocore's)
            import botocore.config
            import botocore.exceptions
            import botocore.session
        except ImportError:
            raise ConfigError(
                "the s3 L2 adapter needs boto3: install lmcache-server[s3] (pip install 'lmcache-server[s3]')"
            ) from None

        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = _redact_url(endpoint_url)  # shown in status; the client gets the original
        self.region = region
        self._capacity = capacity_bytes

        conn_errors: list[type[BaseException]] = [
            botocore.exceptions.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSL, proxy
            botocore.exceptions.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError, streaming errors
        ]
        try:
            import urllib3.exceptions

            conn_errors.append(urllib3.exceptions.HTTPError)
        except ImportError:  # pragma: no cover - botocore depends on urllib3
            pass
        conn_errors.append(ConnectionError)  # the builtin: resets while reading a body
        conn_errors.append(TimeoutError)
        self._conn_errors: tuple[type[BaseException], ...] = tuple(conn_errors)
        self._client_error: type[Exception] = botocore.exceptions.ClientError

        cfg: dict[str, Any] = {
            "region_name": region,
            "connect_timeout": float(connect_timeout),
            "read_timeout": float(read_timeout),
            "retries": {"mode": "standard", "total_max_attempts": int(max_attempts)},
            "max_pool_connections": max_workers + 2,
            "s3": {"addressing_style": addressing_style},
        }
        try:
            # Objects carry their own xxh3 checksum; botocore's CRC on every body is redundant work.
            config = botocore.config.Config(
                **cfg, request_checksum_calculation="when_required", response_checksum_validation="when_required"
            )
        except TypeError:  # botocore < 1.36 has neither option (and computes no default checksum)
            config = botocore.config.Config(**cfg)
        session = botocore.session.Session()
        session.register_component("data_loader", _shared_loader())
        # Credentials go to the client only: never stored on self, logged or reported.
        self._client = session.create_client(
            "s3",
            region_name=region,
            endpoint_url=endpoint_url,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            config=config,
        )

        self._lock = threading.Lock()
        self._closed = False
        self._objects: dict[ObjectKey, int] = {}  # stored object size (header included) by key
        self._bytes_by_salt: dict[str, int] = {}
        self._used = 0
        self._reserved = 0
        self._checksum_failures = 0
        self._foreign_objects_seen = 0
        self._last_error: str | None = None
        self._bucket_pending = create_bucket
        self._scan_state = "not_started"
        self._scan_deleted: set[ObjectKey] | None = None
        self._scan_thread: threading.Thread | None = None
        self._stop = threading.Event()

        if create_bucket:
            self._ensure_bucket()
        if scan_on_start:
            self._start_scan()

    def __repr__(self) -> str:
        return f"S3Backend(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    # ------------------------------------------------------------------ names

    def object_name(self, key: ObjectKey) -> str:
        """The S3 object name of `key`: prefix + storage name."""
        return self.prefix + key.to_storage_name()

    def _parse_name(self, name: str) -> ObjectKey | None:
        if not name.startswith(self.prefix):
            return None
        try:
            return ObjectKey.from_storage_name(name[len(self.prefix) :])
        except InvalidKeyError:
            return None  # not ours (or not a key at all): skipped, never fatal

    # ------------------------------------------------------------------ S3 calls

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one S3 request. Connection-level failures become S3UnavailableError (what the
        circuit breaker counts); HTTP errors (ClientError) pass through: the endpoint answered."""
        try:
            return fn(*args, **kwargs)
        except self._client_error:
            raise
        except self._conn_errors as exc:
            self._note_error(exc)
            log.debug("s3 adapter %r: connection failure %s", self.bucket, type(exc).__name__)
            raise S3UnavailableError(f"s3 endpoint unreachable: {type(exc).__name__}") from exc

    def _note_error(self, exc: BaseException) -> None:
        with self._lock:
            self._last_error = f"{type(exc).__name__}: {exc}"[:300]

    def _error_code(self, exc: BaseException) -> str:
        response = getattr(exc, "response", None) or {}
        return str(response.get("Error", {}).get("Code", ""))

    def _is_not_found(self, exc: BaseException) -> bool:
        return self._error_code(exc) in ("404", "NoSuchKey", "NotFound")

    def probe(self) -> None:
        """HeadBucket against the real endpoint (readiness, and the circuit breaker's probe):
        the bucket exists and these credentials may use it. Raises BackendUnreachableError when
        the endpoint does not answer, BackendUnavailableError naming any other problem. An
        answer also finishes what an outage interrupted (a pending create_bucket, a failed
        usage scan)."""
        if self._bucket_pending:
            self._ensure_bucket()
        where = f"bucket {self.bucket!r} at {self.endpoint_url or 'the default AWS endpoint'}"
        try:
            self._call(self._client.head_bucket, Bucket=self.bucket)
        except S3UnavailableError as exc:
            raise BackendUnreachableError(
                f"{where}: endpoint unreachable ({exc.__cause__.__class__.__name__})"
            ) from exc
        except self._client_error as exc:
            self._rescan_if_failed()
            code = self._error_code(exc)
            self._note_error(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise BackendUnavailableError(
                    f"{where} does not exist (create it, or set \"create_bucket\": true)"
                ) from exc
            if code in ("403", "AccessDenied", "Forbidden"):
                raise BackendUnavailableError(f"{where}: access denied (check the credentials)") from exc
            raise BackendUnavailableError(f"{where}: HeadBucket failed ({code or exc})") from exc
        self._rescan_if_failed()

    def _rescan_if_failed(self) -> None:
        with self._lock:
            rescan = self._scan_state == "failed" and not self._closed
        if rescan:
            self._start_scan()

    def _ensure_bucket(self) -> None:
        try:
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            self._call(self._client.create_bucket, **kwargs)
        except self._client_error as exc:
            if self._error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                log.warning("s3 adapter %r: create_bucket failed: %s", self.bucket, self._error_code(exc))
                self._note_error(exc)
                return
        except S3UnavailableError:
            log.warning("s3 adapter %r: endpoint unreachable; the bucket will be created on recovery", self.bucket)
            return
        self._bucket_pending = False

    # ------------------------------------------------------------------ store

    def put(self, key: ObjectKey, payload: memoryview) -> bool:
        """PUT `header || payload`; False when it does not fit the capacity or S3 refuses it."""
        blob = frame(payload)
        size = len(blob)
        reserved = self._reserve(key, size)
        if reserved is None:
            return False
        try:
            self._call(self._client.put_object, Bucket=self.bucket, Key=self.object_name(key), Body=blob)
        except self._client_error as exc:
            log.warning("s3 adapter %r: PUT failed: %s", self.bucket, self._error_code(exc))
            self._note_error(exc)
            self._release(reserved)
            return False
        except S3UnavailableError:
            self._release(reserved)
            raise
        with self._lock:
            self._reserved -= reserved
            self._index_put_locked(key, size)
        return True

    def _reserve(self, key: ObjectKey, size: int) -> int | None:
        """Bytes reserved for a store (None: it does not fit the configured capacity)."""
        with self._lock:
            growth = max(0, size - self._objects.get(key, 0))
            if self._capacity is not None and self._used + self._reserved + growth > self._capacity:
                return None
            self._reserved += growth
            return growth

    def _release(self, reserved: int) -> None:
        with self._lock:
            self._reserved -= reserved

    def _index_put_locked(self, key: ObjectKey, size: int) -> None:
        self._index_remove_locked(key)
        self._objects[key] = size
        self._used += size
        self._bytes_by_salt[key.cache_salt] = self._bytes_by_salt.get(key.cache_salt, 0) + size

    def _index_remove_locked(self, key: ObjectKey) -> None:
        size = self._objects.pop(key, None)
        if size is None:
            return
        self._used -= size
        left = self._bytes_by_salt.get(key.cache_salt, 0) - size
        if left > 0:
            self._bytes_by_salt[key.cache_salt] = left
        else:
            self._bytes_by_salt.pop(key.cache_salt, None)

    def _forget(self, key: ObjectKey) -> None:
        with self._lock:
            self._index_remove_locked(key)
            if self._scan_deleted is not None:
                self._scan_deleted.add(key)

    # ------------------------------------------------------------------ exists

    def exists(self, key: ObjectKey) -> bool:
        """HEAD the object; one another server stored becomes known (its size too)."""
        try:
            head = self._call(self._client.head_object, Bucket=self.bucket, Key=self.object_name(key))
        except self._client_error as exc:
            if self._is_not_found(exc):
                self._forget(key)
            else:
                self._note_error(exc)
            return False
        size = int(head.get("ContentLength", 0))
        with self._lock:
            if key not in self._objects:  # written by another server sharing the bucket
                self._index_put_locked(key, size)
        return True

    def stored_nbytes(self, keys: Sequence[ObjectKey]) -> list[int | None]:
        """Payload length of each key this adapter knows of (what a load buffer must hold), None
        otherwise. The KnowsStoredSizes capability, answered from memory (no request):
        the serde wrapper uses it to size load buffers for objects it did not store itself; a
        lookup makes objects written by other servers known."""
        with self._lock:
            sizes = [self._objects.get(key) for key in keys]
        return [None if size is None else max(size - HEADER_SIZE, 0) for size in sizes]

    # ------------------------------------------------------------------ load

    def _get_bytes(self, name: str) -> bytes:
        resp = self._client.get_object(Bucket=self.bucket, Key=name)
        body = resp["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def get_into(self, key: ObjectKey, buffer: memoryview) -> bool:
        """GET and verify; a corrupt object is deleted and IntegrityError raised."""
        name = self.object_name(key)
        try:
            blob = self._call(self._get_bytes, name)
        except self._client_error as exc:
            if self._is_not_found(exc):
                self._forget(key)
            else:
                self._note_error(exc)
            return False
        try:
            payload = unframe(blob)
        except IntegrityError as exc:
            self._on_corrupt(key, name, exc)
            raise
        if payload.nbytes != buffer.nbytes:
            return False  # a valid object of another size: the caller asked for something else
        buffer[:] = payload
        return True

    def _on_corrupt(self, key: ObjectKey, name: str, exc: IntegrityError) -> None:
        with self._lock:
            self._checksum_failures += 1
        log.warning("s3 adapter %r: object %s failed verification (%s); deleting it", self.bucket, name, exc)
        try:
            self._call(self._client.delete_object, Bucket=self.bucket, Key=name)
        except (self._client_error, S3UnavailableError) as del_exc:
            log.warning("s3 adapter %r: could not delete corrupt object %s: %s", self.bucket, name, del_exc)
            return
        self._forget(key)

    # ------------------------------------------------------------------ delete

    def delete(self, key: ObjectKey) -> bool:
        return self.delete_many([key])[0]

    def delete_many(self, keys: Sequence[ObjectKey]) -> list[bool]:
        """DeleteObjects in batches of DELETE_BATCH (the DeletesInBatches capability). Keys must
        be distinct (the stack's lock table makes them so)."""
        results = [False] * len(keys)
        with self._lock:
            if self._closed or not keys:
                return results
            unknown = [k for k in keys if k not in self._objects]
        # S3 reports success for deleting a missing object: ask about keys we do not know of.
        missing = self._missing(unknown)
        targets = [(i, k) for i, k in enumerate(keys) if k not in missing]
        for start in range(0, len(targets), DELETE_BATCH):
            chunk = targets[start : start + DELETE_BATCH]
            try:
                resp = self._call(
                    self._client.delete_objects,
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.object_name(k)} for _, k in chunk], "Quiet": True},
                )
            except self._client_error as exc:
                log.warning("s3 adapter %r: batch delete failed: %s", self.bucket, exc)
                self._note_error(exc)
                break
            failed = {err.get("Key") for err in resp.get("Errors", [])}
            for i, key in chunk:
                if self.object_name(key) in failed:
                    continue
                self._forget(key)
                results[i] = True
        return results

    def _missing(self, keys: Sequence[ObjectKey]) -> set[ObjectKey]:
        """Keys whose HEAD answers 404 (rare: keys this process never saw stored or looked up)."""
        missing: set[ObjectKey] = set()
        for key in keys:
            try:
                self._call(self._client.head_object, Bucket=self.bucket, Key=self.object_name(key))
            except self._client_error as exc:
                if self._is_not_found(exc):
                    missing.add(key)
        return missing

    # ------------------------------------------------------------------ listing

    def list_keys(
        self,
        page_size: int,
        page_token: str | None = None,
        *,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> KeyPage:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be a positive integer, got {page_size!r}")
        start_after = _decode_token(page_token) if page_token is not None else None
        list_prefix = self.prefix + (_escaped_model(model_name) + "@" if model_name is not None else "")
        keys: list[ObjectKey] = []
        last_name: str | None = start_after
        for _ in range(MAX_LIST_REQUESTS):
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": list_prefix, "MaxKeys": LIST_BATCH}
            if last_name is not None:
                kwargs["StartAfter"] = last_name
            try:
                resp = self._call(self._client.list_objects_v2, **kwargs)
            except self._client_error as exc:
                raise S3UnavailableError(f"s3 listing failed: {self._error_code(exc)}") from exc
            contents = resp.get("Contents", [])
            truncated = bool(resp.get("IsTruncated"))
            for j, obj in enumerate(contents):
                name = obj["Key"]
                last_name = name
                key = self._parse_name(name)
                if key is None or (cache_salt is not None and key.cache_salt != cache_salt):
                    continue
                if model_name is not None and key.model_name != model_name:
                    continue
                keys.append(key)
                if len(keys) == page_size:
                    more = j < len(contents) - 1 or truncated
                    return KeyPage(keys, _encode_token(name) if more else None)
            if not truncated or not contents:
                return KeyPage(keys, None)
        # Many foreign or filtered-out names: hand back a short page rather than scan on and on.
        return KeyPage(keys, _encode_token(last_name) if last_name is not None else None)

    # ------------------------------------------------------------------ usage

    def usage(self) -> L2Usage:
        with self._lock:
            return L2Usage(self._used, self._capacity, dict(self._bytes_by_salt))

    def _start_scan(self) -> None:
        with self._lock:
            if self._closed or self._scan_state == "in_progress":
                return
            self._scan_state = "in_progress"
            self._scan_deleted = set()
        self._scan_thread = threading.Thread(target=self._scan, name=f"lmcache-s3-scan-{self.bucket}", daemon=True)
        self._scan_thread.start()

    def _scan(self) -> None:
        """Count the objects already under the prefix; the adapter serves meanwhile."""
        token: str | None = None
        try:
            while not self._stop.is_set():
                kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix, "MaxKeys": LIST_BATCH}
                if token is not None:
                    kwargs["ContinuationToken"] = token
                resp = self._call(self._client.list_objects_v2, **kwargs)
                with self._lock:
                    deleted = self._scan_deleted or set()
                    for obj in resp.get("Contents", []):
                        key = self._parse_name(obj["Key"])
                        if key is None:
                            self._foreign_objects_seen += 1
                        elif key not in self._objects and key not in deleted:
                            self._index_put_locked(key, int(obj.get("Size", 0)))
                token = resp.get("NextContinuationToken")
                if not resp.get("IsTruncated") or not token:
                    break
        except Exception as exc:
            if isinstance(exc, self._client_error):
                self._note_error(exc)
            log.warning("s3 adapter %r: usage scan failed (%s); usage counts only this run's writes",
                        self.bucket, type(exc).__name__)
            state = "failed"
        else:
            state = "stopped" if self._stop.is_set() else "done"
        with self._lock:
            self._scan_state = state
            self._scan_deleted = None

    # ------------------------------------------------------------------ status / close

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            report: dict[str, Any] = {
                "is_healthy": not self._closed,
                "kind": self.kind,
                "bucket": self.bucket,
                "prefix": self.prefix,
                "endpoint_url": self.endpoint_url,
                "region": self.region,
                "checksum_failures": self._checksum_failures,
                "stored_object_count": len(self._objects),
                "used_bytes": self._used,
                "capacity_bytes": self._capacity,
                "usage_scan": self._scan_state,
                "foreign_objects_seen": self._foreign_objects_seen,
                "last_error": self._last_error,
            }
        return report

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._scan_thread is not None:
            self._scan_thread.join(timeout=30)
        try:
            self._client.close()
        except Exception:  # closing HTTP connections must not fail shutdown
            log.debug("s3 adapter %r: client close failed", self.bucket, exc_info=True)


class S3L2Adapter(BackendL2Adapter):
    """The `s3` kind: an S3Backend behind the standard L2 stack, with a circuit breaker that
    fails fast while the endpoint is unreachable and recovers on its own."""

    backend: S3Backend

    def __init__(
        self,
        *,
        bucket: str,
        max_workers: int = 8,
        circuit_breaker_threshold: int = 5,
        circuit_breaker_backoff_seconds: float = 5.0,
        circuit_breaker_max_backoff_seconds: float = 60.0,
        clock: Clock | None = None,
        metrics: MetricsSink | None = None,
        name: str = "s3",
        **backend_fields: Any,
    ) -> None:
        _check_positive("circuit_breaker_threshold", circuit_breaker_threshold, integer=True)
        _check_positive("circuit_breaker_backoff_seconds", circuit_breaker_backoff_seconds, integer=False)
        _check_positive("circuit_breaker_max_backoff_seconds", circuit_breaker_max_backoff_seconds, integer=False)
        breaker = BreakerSettings(
            circuit_breaker_threshold,
            float(circuit_breaker_backoff_seconds),
            float(circuit_breaker_max_backoff_seconds),
        )
        backend = S3Backend(bucket=bucket, max_workers=max_workers, **backend_fields)
        try:
            super().__init__(
                backend, name=name, max_workers=max_workers, metrics=metrics, clock=clock, circuit_breaker=breaker
            )
        except BaseException:
            backend.close()
            raise

    @property
    def bucket(self) -> str:
        return self.backend.bucket

    def object_name(self, key: ObjectKey) -> str:
        """The S3 object name of `key`: prefix + storage name."""
        return self.backend.object_name(key)

    def stored_nbytes(self, keys: Sequence[ObjectKey]) -> list[int | None]:
        """KnowsStoredSizes: the backend's answer (no request)."""
        return self.backend.stored_nbytes(keys)

    def probe(self) -> None:
        """ProbesBackend: HeadBucket, through the circuit breaker (which counts the answer)."""
        prober = capability_of(self._io, ProbesBackend)
        if prober is not None:
            prober.probe()


# --------------------------------------------------------------------------- config


def _check_positive(name: str, value: Any, *, integer: bool, allow_zero: bool = False) -> None:
    kind = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < 0 or (value == 0 and not allow_zero):
        what = "an integer" if integer else "a number"
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"s3 adapter field {name!r} must be {what} {bound}, got {value!r}")


def _validate(**fields: Any) -> None:
    bucket = fields["bucket"]
    if not isinstance(bucket, str) or not bucket.strip():
        raise ConfigError("s3 adapter field 'bucket' must be a non-empty string")
    if not isinstance(fields["prefix"], str):
        raise ConfigError("s3 adapter field 'prefix' must be a string")
    if not isinstance(fields["region"], str) or not fields["region"]:
        raise ConfigError("s3 adapter field 'region' must be a non-empty string")
    url = fields["endpoint_url"]
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise ConfigError(f"s3 adapter field 'endpoint_url' must be an http:// or https:// URL, got {url!r}")
    if fields["addressing_style"] not in ("auto", "path", "virtual"):
        raise ConfigError(
            f"s3 adapter field 'addressing_style' must be auto, path or virtual, got {fields['addressing_style']!r}"
        )
    for name in ("max_workers", "max_attempts"):
        _check_positive(name, fields[name], integer=True)
    for name in ("connect_timeout", "read_timeout"):
        _check_positive(name, fields[name], integer=False)
    if fields["capacity_bytes"] is not None:
        _check_positive("capacity_bytes", fields["capacity_bytes"], integer=True)


def create_s3_adapter(config: dict[str, Any], services: Any) -> S3L2Adapter:
    """Factory for the `s3` kind: `config` is the validated `--l2-adapter` JSON without `type`.

    Uses the services' name, clock and metrics when it provides them."""
    from lmcache_core.plugin.registry import COMMON_FIELDS

    unknown = sorted(set(config) - set(S3_FIELDS) - set(COMMON_FIELDS))
    if unknown:
        raise ConfigError(f"unknown field(s) for L2 adapter 's3': {', '.join(unknown)}")
    kwargs = {name: value for name, value in config.items() if name in S3_FIELDS and value is not None}
    if "bucket" not in kwargs:
        raise ConfigError("L2 adapter 's3' requires field 'bucket'")
    context = StackContext.of(services, config, "s3")
    return S3L2Adapter(**kwargs, clock=context.clock, metrics=context.metrics, name=context.name)
