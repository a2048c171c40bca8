"""SqliteBackend: one row per KV chunk, integrity-framed. Only the SQL lives here: lmcache's
standard L2 stack adds the threads, Futures, key locks, metrics and close handling."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from typing import Any

from lmcache_sdk import (
    ConfigError,
    IntegrityError,
    InvalidKeyError,
    KeyPage,
    L2Usage,
    ObjectKey,
    frame,
    unframe,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    name TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    cache_salt TEXT NOT NULL,
    size INTEGER NOT NULL,
    blob BLOB NOT NULL
)
"""


class SqliteBackend:
    """A storage backend over SQLite (WAL mode). Survives restarts: usage is rebuilt from the table."""

    kind = "sqlite"

    def __init__(self, path: str, *, capacity_bytes: int | None = None) -> None:
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ConfigError("field 'capacity_bytes' of L2 adapter 'sqlite' must be >= 0")
        self.path = path
        self.capacity_bytes = capacity_bytes
        self._local = threading.local()
        self._lock = threading.Lock()  # one writer at a time; also guards the usage counters
        self._checksum_failures = 0
        try:
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash never tears a commit
            conn.execute(_SCHEMA)
            conn.commit()
            rows = conn.execute("SELECT cache_salt, SUM(size), COUNT(*) FROM objects GROUP BY cache_salt").fetchall()
        except sqlite3.Error as exc:
            raise ConfigError(f"field 'path' of L2 adapter 'sqlite': cannot open {path!r}: {exc}") from exc
        self._by_salt: Counter[str] = Counter({salt: int(total) for salt, total, _ in rows})
        self._count = sum(int(n) for _, _, n in rows)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._local.conn = conn
        return conn

    def put(self, key: ObjectKey, payload: memoryview) -> bool:
        blob = frame(payload)  # checksum outside the lock
        name, size = key.to_storage_name(), payload.nbytes
        conn = self._conn()
        with self._lock:
            old = conn.execute("SELECT size FROM objects WHERE name = ?", (name,)).fetchone()
            old_size = int(old[0]) if old else 0
            if self.capacity_bytes is not None and sum(self._by_salt.values()) - old_size + size > self.capacity_bytes:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)", (name, key.model_name, key.cache_salt, size, blob)
            )
            conn.commit()
            self._by_salt[key.cache_salt] += size - old_size
            self._count += 0 if old else 1
        return True

    def get_into(self, key: ObjectKey, buffer: memoryview) -> bool:
        row = self._conn().execute("SELECT blob FROM objects WHERE name = ?", (key.to_storage_name(),)).fetchone()
        if row is None:
            return False
        try:
            payload = unframe(row[0])
        except IntegrityError:
            with self._lock:
                self._checksum_failures += 1
            self.delete(key)
            raise  # IntegrityError: the stack counts it and answers a miss
        if payload.nbytes != buffer.nbytes:
            return False
        buffer[:] = payload
        return True

    def exists(self, key: ObjectKey) -> bool:
        return self._conn().execute("SELECT 1 FROM objects WHERE name = ?", (key.to_storage_name(),)).fetchone() is not None

    def delete(self, key: ObjectKey) -> bool:
        conn = self._conn()
        with self._lock:
            row = conn.execute("SELECT size FROM objects WHERE name = ?", (key.to_storage_name(),)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM objects WHERE name = ?", (key.to_storage_name(),))
            conn.commit()
            self._by_salt[key.cache_salt] -= int(row[0])
            self._count -= 1
            return True

    def list_keys(
        self,
        page_size: int,
        page_token: str | None = None,
        *,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> KeyPage:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        query = "SELECT name FROM objects WHERE name > ?"
        args: list[Any] = [page_token or ""]
        if model_name is not None:
            query += " AND model_name = ?"
            args.append(model_name)
        if cache_salt is not None:
            query += " AND cache_salt = ?"
            args.append(cache_salt)
        query += " ORDER BY name LIMIT ?"
        args.append(page_size + 1)
        names = [r[0] for r in self._conn().execute(query, args).fetchall()]
        more = len(names) > page_size
        names = names[:page_size]
        keys = []
        for name in names:
            try:
                keys.append(ObjectKey.from_storage_name(name))
            except InvalidKeyError:
                continue
        return KeyPage(keys, names[-1] if more and names else None)

    def usage(self) -> L2Usage:
        with self._lock:
            by_salt = {salt: n for salt, n in self._by_salt.items() if n > 0}
        return L2Usage(sum(by_salt.values()), self.capacity_bytes, by_salt)

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "is_healthy": True,
                "kind": self.kind,
                "path": self.path,
                "stored_object_count": self._count,
                "used_bytes": sum(self._by_salt.values()),
                "capacity_bytes": self.capacity_bytes,
                "checksum_failures": self._checksum_failures,
            }

    def close(self) -> None:
        return None  # connections are per thread and close with their threads
