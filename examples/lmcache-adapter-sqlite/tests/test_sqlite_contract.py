"""The sqlite backend passes lmcache's storage backend contract, and the L2 contract behind the
standard stack (run by lmcache-server's own tests)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from lmcache_sqlite.adapter import SqliteBackend

from lmcache_sdk import BackendL2Adapter, ObjectKey
from lmcache_sdk.testing import L2AdapterContract, StorageBackendContract


def flip_last_byte(path: str, key: ObjectKey) -> None:
    conn = sqlite3.connect(path)
    (blob,) = conn.execute("SELECT blob FROM objects WHERE name = ?", (key.to_storage_name(),)).fetchone()
    flipped = bytearray(blob)
    flipped[-1] ^= 0xFF
    conn.execute("UPDATE objects SET blob = ? WHERE name = ?", (bytes(flipped), key.to_storage_name()))
    conn.commit()
    conn.close()


class TestSqliteBackendContract(StorageBackendContract):
    supports_listing = True
    persists_bytes = True

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[SqliteBackend]:
        b = SqliteBackend(str(tmp_path / "l2.sqlite3"))
        yield b
        b.close()

    @pytest.fixture
    def capacity_limited_backend(self, tmp_path: Path) -> Iterator[SqliteBackend]:
        b = SqliteBackend(str(tmp_path / "small.sqlite3"), capacity_bytes=32 * 1024)
        yield b
        b.close()

    def corrupt(self, backend: SqliteBackend, key: ObjectKey) -> None:  # type: ignore[override]
        flip_last_byte(backend.path, key)


class TestSqliteContract(L2AdapterContract):
    supports_listing = True
    persists_bytes = True

    @pytest.fixture
    def adapter(self, tmp_path: Path) -> Iterator[BackendL2Adapter]:
        a = BackendL2Adapter(SqliteBackend(str(tmp_path / "l2.sqlite3")))
        yield a
        a.close()

    @pytest.fixture
    def capacity_limited_adapter(self, tmp_path: Path) -> Iterator[BackendL2Adapter]:
        a = BackendL2Adapter(SqliteBackend(str(tmp_path / "small.sqlite3"), capacity_bytes=32 * 1024))
        yield a
        a.close()

    def corrupt(self, adapter: BackendL2Adapter, key: ObjectKey) -> None:  # type: ignore[override]
        assert isinstance(adapter.backend, SqliteBackend)
        flip_last_byte(adapter.backend.path, key)
