"""Per-key results of L1 batch operations, and write reservation modes."""

from __future__ import annotations

from enum import StrEnum


class OpResult(StrEnum):
    """Outcome of one key in a batch operation."""

    SUCCESS = "SUCCESS"
    KEY_NOT_EXIST = "KEY_NOT_EXIST"
    KEY_NOT_READABLE = "KEY_NOT_READABLE"
    KEY_NOT_WRITABLE = "KEY_NOT_WRITABLE"
    KEY_IN_WRONG_STATE = "KEY_IN_WRONG_STATE"
    KEY_IS_LOCKED = "KEY_IS_LOCKED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"

    @property
    def ok(self) -> bool:
        return self is OpResult.SUCCESS


class WriteMode(StrEnum):
    """Which keys `reserve_write` may reserve.

    NEW: only keys that do not exist (existing ones answer KEY_IN_WRONG_STATE);
    UPDATE: only existing, writable keys (missing ones answer KEY_NOT_EXIST);
    ALL: either."""

    NEW = "new"
    UPDATE = "update"
    ALL = "all"
