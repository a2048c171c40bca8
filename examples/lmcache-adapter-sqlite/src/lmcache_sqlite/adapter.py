"""SqliteL2Adapter: one row per KV chunk, integrity-framed, behind a small thread pool."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lmcache_adapters.l2.batch import acquire_lock_count, release_lock_count
from lmcache_adapters.l2.integrity import IntegrityError, frame, unframe
from lmcache_core.errors import ConfigError, InvalidKeyError
from lmcache_core.keys import ObjectKey
from lmcache_core.ports import KeyPage, L2Usage

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    name TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    cache_salt TEXT NOT NULL,
    size INTEGER NOT NULL,
    blob BLOB NOT NULL
)
"""


class SqliteL2Adapter:
    """An L2 adapter over SQLite (WAL mode). Survives restarts: usage is rebuilt from the table."""

    kind = "sqlite"

    def __init__(self, path: str, *, capacity_bytes: int | None = None, max_workers: int = 2) -> None:
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ConfigError("field 'capacity_bytes' of L2 adapter 'sqlite' must be >= 0")
        if max_workers < 1:
            raise ConfigError("field 'max_workers' of L2 adapter 'sqlite' must be >= 1")
        self.path = path
        self.capacity_bytes = capacity_bytes
        self._local = threading.local()
        self._lock = threading.Lock()
        self._locks: dict[ObjectKey, int] = {}
        self._closed = False
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
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="lmcache-sqlite")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._local.conn = conn
        return conn

    def _submit(self, fn: Any, *args: Any) -> Future[list[bool]]:
        if self._closed:
            failed: Future[list[bool]] = Future()
            failed.set_exception(RuntimeError("sqlite adapter is closed"))
            return failed
        return self._pool.submit(fn, *args)

    # -- L2Adapter --------------------------------------------------------------------------

    def submit_store(self, keys: Sequence[ObjectKey], payloads: Sequence[memoryview]) -> Future[list[bool]]:
        return self._submit(self._store, list(keys), list(payloads))

    def _store(self, keys: list[ObjectKey], payloads: list[memoryview]) -> list[bool]:
        conn = self._conn()
        out = []
        framed = [frame(p) for p in payloads]  # checksum outside the lock
        with self._lock:  # one transaction per batch
            for key, payload, blob in zip(keys, payloads, framed, strict=True):
                size = memoryview(payload).nbytes
                name = key.to_storage_name()
                old = conn.execute("SELECT size FROM objects WHERE name = ?", (name,)).fetchone()
                old_size = int(old[0]) if old else 0
                used = sum(self._by_salt.values())
                if self.capacity_bytes is not None and used - old_size + size > self.capacity_bytes:
                    out.append(False)
                    continue
                conn.execute(
                    "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
                    (name, key.model_name, key.cache_salt, size, blob),
                )
                self._by_salt[key.cache_salt] += size - old_size
                self._count += 0 if old else 1
                out.append(True)
            conn.commit()
        return out

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        return self._submit(self._lookup, list(keys))

    def _lookup(self, keys: list[ObjectKey]) -> list[bool]:
        conn = self._conn()
        out = []
        for key in keys:
            hit = conn.execute("SELECT 1 FROM objects WHERE name = ?", (key.to_storage_name(),)).fetchone()
            if hit:
                with self._lock:
                    acquire_lock_count(self._locks, key)
            out.append(bool(hit))
        return out

    def submit_load(self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]) -> Future[list[bool]]:
        return self._submit(self._load, list(keys), list(buffers))

    def _load(self, keys: list[ObjectKey], buffers: list[memoryview]) -> list[bool]:
        conn = self._conn()
        out = []
        for key, buffer in zip(keys, buffers, strict=True):
            row = conn.execute("SELECT blob FROM objects WHERE name = ?", (key.to_storage_name(),)).fetchone()
            if row is None:
                out.append(False)
                continue
            try:
                payload = unframe(row[0])
            except IntegrityError as exc:
                log.warning("corrupt sqlite object %s: %s; deleting it", key, exc)
                self._checksum_failures += 1
                self._remove(conn, key)
                out.append(False)
                continue
            target = memoryview(buffer).cast("B")
            if target.nbytes != payload.nbytes:
                out.append(False)
                continue
            target[:] = payload
            out.append(True)
        return out

    def unlock(self, keys: Sequence[ObjectKey]) -> None:
        with self._lock:
            for key in keys:
                release_lock_count(self._locks, key)

    def delete(self, keys: Sequence[ObjectKey]) -> list[bool]:
        conn = self._conn()
        out = []
        for key in keys:
            with self._lock:
                locked = self._locks.get(key, 0) > 0
            out.append(False if locked else self._remove(conn, key))
        return out

    def _remove(self, conn: sqlite3.Connection, key: ObjectKey) -> bool:
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
                "is_healthy": not self._closed,
                "kind": self.kind,
                "path": self.path,
                "stored_object_count": self._count,
                "used_bytes": sum(self._by_salt.values()),
                "capacity_bytes": self.capacity_bytes,
                "locked_key_count": len(self._locks),
                "checksum_failures": self._checksum_failures,
            }

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
