"""Small pieces every L2 adapter needs: batch argument checks, failed Futures, counted key locks."""

from __future__ import annotations

from collections.abc import Hashable, MutableMapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

_K = TypeVar("_K", bound=Hashable)


def check_lengths(keys: Sequence[Any], views: Sequence[memoryview], what: str) -> None:
    """ValueError unless there is exactly one payload/buffer per key (a caller bug, raised at once)."""
    if len(keys) != len(views):
        raise ValueError(f"got {len(keys)} keys but {len(views)} {what}")


def failed_future(exc: BaseException) -> Future[Any]:
    """A Future that already failed with `exc` (a submit that cannot run never raises)."""
    future: Future[Any] = Future()
    future.set_exception(exc)
    return future


def acquire_lock_count(counts: MutableMapping[_K, int], key: _K) -> None:
    """One more lock on `key` (the caller holds the adapter's lock)."""
    counts[key] = counts.get(key, 0) + 1


def release_lock_count(counts: MutableMapping[_K, int], key: _K) -> None:
    """One lock fewer on `key`; a key at zero leaves the table, unknown keys are ignored
    (the caller holds the adapter's lock)."""
    count = counts.get(key, 0)
    if count > 1:
        counts[key] = count - 1
    elif count == 1:
        del counts[key]
