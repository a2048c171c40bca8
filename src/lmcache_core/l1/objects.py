"""L1Object: one resident L1 object and every rule about its state (readable, writable, TTL locks,
promises vs copies in flight).

The rules live here and nowhere else: the manager's batch operations call these methods and
never read or write the lock fields themselves. The methods are small and take `now` (and a
precomputed deadline) from the caller, so a batch reads the clock once and adds its TTL once;
that keeps the LOOKUP path (128+ keys per request) within a method call per key and lock.
"""

from __future__ import annotations

from lmcache_core.keys import ObjectKey
from lmcache_core.ports import MemoryHandle


class L1Object:
    """One resident object: its memory, its flags and its three TTL locks.

    A TTL lock is a count of holders with one shared deadline: taking it adds holders and moves
    the deadline to `now + ttl` for all of them; it is held while `count > 0 and now < deadline`.
    Once the deadline passes every holder is presumed dead: the lock reads as free, and the next
    change starts again from zero, so a late release from a slow holder is refused instead of
    corrupting a newer lock.

    - the write lock: a writer is filling the memory (`reserve_write` .. `finish_write`);
    - the read lock: every reader, promises and copies alike;
    - the copy lock: the readers that are copying the memory right now (a subset of the read
      lock). The rest of the read lock are *promises* (a LOOKUP's locks kept for a later
      retrieve): nothing reads the memory for them yet.

    Not thread-safe: the L1 manager serialises every call under its lock.
    """

    __slots__ = (
        "copies",
        "copy_until",
        "created_at",
        "handle",
        "key",
        "last_access",
        "pending",
        "read_until",
        "readers",
        "ready",
        "size",
        "stamp",
        "temporary",
        "write_until",
        "writers",
    )

    def __init__(self, key: ObjectKey, handle: MemoryHandle, size: int, temporary: bool, now: float) -> None:
        self.key = key
        self.handle = handle
        self.size = size
        self.temporary = temporary
        # False until a write finishes; an object whose write lock expires before that was
        # abandoned by a crashed writer and holds garbage, so it is never made readable.
        self.ready = False
        self.writers = 0
        self.write_until = 0.0
        self.readers = 0
        self.read_until = 0.0
        self.copies = 0
        self.copy_until = 0.0
        # True once force-cleared with a copy in flight: out of the table, memory kept until
        # the copy finishes (found by its handle, never by its key).
        self.pending = False
        self.created_at = now
        self.last_access = now
        # Set by a batch operation to its own token: a second sight of the object in the same
        # batch is a duplicate key (cheaper than hashing every key into a "seen" set).
        self.stamp: object = None

    # -- state (pure: nothing changes) ------------------------------------------------------

    def write_locked(self, now: float) -> bool:
        return self.writers > 0 and now < self.write_until

    def read_count(self, now: float) -> int:
        """Live read holders (promises and copies)."""
        return self.readers if self.readers > 0 and now < self.read_until else 0

    def copy_count(self, now: float) -> int:
        """Live copies in flight."""
        return self.copies if self.copies > 0 and now < self.copy_until else 0

    def promises(self, now: float) -> int:
        """Live read holders that are promises, not copies."""
        return max(0, self.read_count(now) - self.copy_count(now))

    def read_locked(self, now: float) -> bool:
        return self.readers > 0 and now < self.read_until

    def locked(self, now: float) -> bool:
        return self.write_locked(now) or self.read_locked(now) or self.copy_count(now) > 0

    def in_flight(self, now: float) -> bool:
        """A writer or a copy is using the memory right now (promises do not count)."""
        return self.write_locked(now) or self.copy_count(now) > 0

    def readable(self, now: float) -> bool:
        """Its write finished and no writer is rewriting it."""
        return self.ready and not (self.writers > 0 and now < self.write_until)

    def writable(self, now: float) -> bool:
        """May be rewritten in place: not temporary and nobody holds any lock on it."""
        return not self.temporary and not self.locked(now)

    def abandoned(self, now: float) -> bool:
        """Its writer's lock expired before the write finished: the memory holds garbage."""
        return not self.ready and not self.write_locked(now)

    # -- changes ----------------------------------------------------------------------------

    def lock_write(self, now: float, until: float) -> None:
        """Add a writer; every writer's deadline becomes `until` (now + the write TTL)."""
        if self.writers > 0 and now >= self.write_until:
            self.writers = 0
        self.writers += 1
        self.write_until = until

    def unlock_write(self, now: float) -> bool:
        """Remove a writer; False (nothing changed) when none is held, expired ones included."""
        if self.writers > 0 and now < self.write_until:
            self.writers -= 1
            return True
        self.writers = 0
        return False

    def unlock_read(self, count: int, now: float, promise: bool) -> int:
        """Remove `count` readers of one kind (promises with `promise`, else copies). Returns the
        live readers left, or -1 (nothing changed) when fewer of that kind are held."""
        readers = self.readers
        if readers > 0 and now >= self.read_until:
            self.readers = readers = 0  # expired: a late release is refused
        copies = self.copies
        if copies > 0 and now >= self.copy_until:
            self.copies = copies = 0
        if promise:
            held = readers - copies
        else:
            held = copies if copies < readers else readers
        if count > held:
            return -1
        self.readers = readers - count
        if not promise:
            self.copies = copies - count
        return readers - count

    def convert_promise(self, now: float, until: float) -> bool:
        """Turn one promise into a copy in flight; False (nothing changed) when none is held."""
        if self.promises(now) < 1:
            return False
        if self.copies > 0 and now >= self.copy_until:
            self.copies = 0
        self.copies += 1
        self.copy_until = until
        # The promise's read lock now covers the copy: give it the copy's deadline, so the read
        # count cannot lapse under a copy still running.
        self.read_until = max(self.read_until, until)
        self.last_access = now
        return True

    def void_promises(self, now: float) -> None:
        """Drop every promise (the object left the table); copies in flight keep their locks."""
        self.readers = min(self.read_count(now), self.copy_count(now))

    def expire(self, now: float) -> int:
        """Forget holders presumed dead; returns how many of the three locks had expired."""
        expired = 0
        if self.writers > 0 and now >= self.write_until:
            self.writers = 0
            expired += 1
        if self.readers > 0 and now >= self.read_until:
            self.readers = 0
            expired += 1
        if self.copies > 0 and now >= self.copy_until:
            self.copies = 0
            expired += 1
        return expired

    def __repr__(self) -> str:
        return (
            f"L1Object({self.key!r}, size={self.size}, ready={self.ready}, writers={self.writers}, "
            f"readers={self.readers}, copies={self.copies}, temporary={self.temporary}, pending={self.pending})"
        )


def lock_reads(objs: list[L1Object], holders: int, now: float, until: float, copy: bool) -> list[ObjectKey]:
    """Add `holders` readers to each object, copies in flight with `copy` (else promises); every
    reader's deadline becomes `until` (now + the read TTL). Returns the objects' stored keys.

    One loop per batch rather than a method per object: the LOOKUP path locks 128+ objects per
    request, and a call per object would cost it about a tenth."""
    keys: list[ObjectKey] = []
    append = keys.append
    for obj in objs:
        if obj.readers > 0 and now >= obj.read_until:
            obj.readers = 0  # expired: its holders are presumed dead
        obj.readers += holders
        obj.read_until = until
        if copy:
            if obj.copies > 0 and now >= obj.copy_until:
                obj.copies = 0
            obj.copies += holders
            obj.copy_until = until
        obj.last_access = now
        append(obj.key)
    return keys
