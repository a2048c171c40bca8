"""The L2 contract suite over the s3 adapter, against moto's S3 server in its own process over HTTP."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmcache_adapters.l2.s3 import S3Backend, S3L2Adapter
from lmcache_adapters.testing import L2AdapterContract, StorageBackendContract
from lmcache_core.keys import ObjectKey
from lmcache_core.ports import L2Adapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the moto helper module
from s3_server import MotoServer, moto_server  # noqa: E402

BUCKET = "contract"


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoServer]:
    with moto_server() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


def _adapter(s3: MotoServer, **extra: object) -> S3L2Adapter:
    # a fresh prefix per test: every adapter starts empty, and moto needs no cleanup
    return S3L2Adapter(
        bucket=BUCKET,
        endpoint_url=s3.url,
        prefix=f"t-{uuid.uuid4().hex[:12]}/",
        connect_timeout=2.0,
        read_timeout=5.0,
        **extra,  # type: ignore[arg-type]
    )


class TestS3Contract(L2AdapterContract):
    supports_listing = True
    persists_bytes = True
    # moto spends several ms of Python per request: the same interleaving at a smaller volume
    concurrent_batches = 3

    @pytest.fixture
    def adapter(self, s3: MotoServer) -> Iterator[L2Adapter]:
        adapter = _adapter(s3)
        self._s3 = s3
        yield adapter
        adapter.close()

    @pytest.fixture
    def capacity_limited_adapter(self, s3: MotoServer) -> Iterator[L2Adapter]:
        adapter = _adapter(s3, capacity_bytes=32 * 1024)
        yield adapter
        adapter.close()

    def corrupt(self, adapter: L2Adapter, key: ObjectKey) -> None:
        assert isinstance(adapter, S3L2Adapter)
        client = self._s3.client()
        name = adapter.object_name(key)
        blob = bytearray(client.get_object(Bucket=BUCKET, Key=name)["Body"].read())
        blob[len(blob) // 2] ^= 0x01  # one flipped bit in the payload
        client.put_object(Bucket=BUCKET, Key=name, Body=bytes(blob))


class TestS3BackendContract(StorageBackendContract):
    supports_listing = True
    persists_bytes = True

    @staticmethod
    def _backend(s3: MotoServer, **extra: object) -> S3Backend:
        return S3Backend(
            bucket=BUCKET,
            endpoint_url=s3.url,
            prefix=f"t-{uuid.uuid4().hex[:12]}/",
            connect_timeout=2.0,
            read_timeout=5.0,
            **extra,  # type: ignore[arg-type]
        )

    @pytest.fixture
    def backend(self, s3: MotoServer) -> Iterator[S3Backend]:
        backend = self._backend(s3)
        self._s3 = s3
        yield backend
        backend.close()

    @pytest.fixture
    def capacity_limited_backend(self, s3: MotoServer) -> Iterator[S3Backend]:
        backend = self._backend(s3, capacity_bytes=32 * 1024)
        yield backend
        backend.close()

    def corrupt(self, backend: S3Backend, key: ObjectKey) -> None:  # type: ignore[override]
        client = self._s3.client()
        name = backend.object_name(key)
        blob = bytearray(client.get_object(Bucket=BUCKET, Key=name)["Body"].read())
        blob[len(blob) // 2] ^= 0x01
        client.put_object(Bucket=BUCKET, Key=name, Body=bytes(blob))
