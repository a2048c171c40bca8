"""The sqlite adapter passes lmcache's L2 contract suite (run by lmcache-server's own tests)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from lmcache_sqlite.adapter import SqliteL2Adapter

from lmcache_adapters.testing import L2AdapterContract
from lmcache_core.keys import ObjectKey


class TestSqliteContract(L2AdapterContract):
    supports_listing = True
    persists_bytes = True

    @pytest.fixture
    def adapter(self, tmp_path: Path) -> Iterator[SqliteL2Adapter]:
        a = SqliteL2Adapter(str(tmp_path / "l2.sqlite3"))
        yield a
        a.close()

    @pytest.fixture
    def capacity_limited_adapter(self, tmp_path: Path) -> Iterator[SqliteL2Adapter]:
        a = SqliteL2Adapter(str(tmp_path / "small.sqlite3"), capacity_bytes=32 * 1024)
        yield a
        a.close()

    def corrupt(self, adapter: SqliteL2Adapter, key: ObjectKey) -> None:  # type: ignore[override]
        conn = sqlite3.connect(adapter.path)
        (blob,) = conn.execute("SELECT blob FROM objects WHERE name = ?", (key.to_storage_name(),)).fetchone()
        flipped = bytearray(blob)
        flipped[-1] ^= 0xFF
        conn.execute("UPDATE objects SET blob = ? WHERE name = ?", (bytes(flipped), key.to_storage_name()))
        conn.commit()
        conn.close()
