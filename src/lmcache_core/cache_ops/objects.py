"""ObjectService: the L2 adapter inventory, paged listings of what an adapter holds, and one
key-addressed delete that spans L1 and L2."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lmcache_core.cache_ops.tiers import Tier
from lmcache_core.errors import InvalidRequestError, UnavailableError
from lmcache_core.keys import ObjectKey
from lmcache_core.l1.results import OpResult
from lmcache_core.l2.entry import L2AdapterEntry
from lmcache_core.ports import KnowsStoredSizes, L2Adapter, Reconfigurable, capability_of
from lmcache_core.storage_manager import StorageManager

MAX_DELETE_BATCH = 10_000
"""Most keys one delete may name: bounds the request and the time it holds an adapter."""
NO_L2_ADAPTERS = "no L2 adapters configured"


def reconfigurable_target(adapter: L2Adapter) -> Reconfigurable | None:
    """What reconfigures the adapter (itself, or what a wrapper declares), or None."""
    return capability_of(adapter, Reconfigurable)


def check_delete_batch(count: int) -> None:
    """InvalidRequestError (400) past MAX_DELETE_BATCH keys."""
    if count > MAX_DELETE_BATCH:
        raise InvalidRequestError(f"too many keys in a single request (limit={MAX_DELETE_BATCH}, got={count})")


@dataclass(frozen=True)
class AdapterInfo:
    """One configured L2 adapter as the inventory routes show it."""

    index: int
    name: str
    kind: str
    type_name: str
    primary: bool
    reconfigurable: bool


@dataclass(frozen=True)
class ObjectPage:
    """One page of an adapter's keys with their stored sizes (None where unknown)."""

    adapter: L2AdapterEntry
    entries: list[tuple[ObjectKey, int | None]]
    next_page_token: str | None


@dataclass(frozen=True)
class DeleteOutcome:
    """What one delete did. `l1_skipped` counts L1 objects left in place because they were
    locked or pinned (without `force`); `error` is set when the L2 adapter failed."""

    requested: int
    l1_deleted: int = 0
    l1_skipped: int = 0
    l2_deleted: int = 0
    adapter: L2AdapterEntry | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def deleted(self) -> int:
        return self.l1_deleted + self.l2_deleted


class ObjectService:
    """Key-level operations over the storage manager's tiers."""

    def __init__(self, storage: StorageManager) -> None:
        self._storage = storage

    # -- adapters -------------------------------------------------------------------------

    def adapters(self) -> list[AdapterInfo]:
        """Every configured adapter, in configuration order (the first is the primary)."""
        return [
            AdapterInfo(
                index=e.index,
                name=e.name,
                kind=e.adapter.kind,
                type_name=e.type_name,
                primary=e.primary,
                reconfigurable=reconfigurable_target(e.adapter) is not None,
            )
            for e in self._storage.l2_adapters
        ]

    def adapter(self, selector: str | None) -> L2AdapterEntry:
        """The primary adapter (None) or the first matching `selector` (type name, label or
        kind). UnavailableError when none is configured, NotFoundError when none matches."""
        if not self._storage.l2_adapters:
            raise UnavailableError(NO_L2_ADAPTERS)
        return self._storage.find_adapter(selector)

    # -- listing --------------------------------------------------------------------------

    def list_objects(
        self,
        selector: str | None,
        *,
        page_size: int,
        page_token: str | None = None,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> ObjectPage:
        """One page of the keys an adapter holds. Raises ListingNotSupportedError when the
        adapter cannot enumerate, InvalidRequestError for a page token it did not issue."""
        entry = self.adapter(selector)
        adapter = entry.adapter
        try:
            page = adapter.list_keys(page_size, page_token, model_name=model_name, cache_salt=cache_salt)
        except ValueError as exc:
            raise InvalidRequestError(f"invalid page_token: {exc}") from None
        sizes: Sequence[int | None] = [None] * len(page.keys)
        known = capability_of(adapter, KnowsStoredSizes)
        if known is not None and page.keys:
            sizes = known.stored_nbytes(page.keys)
        return ObjectPage(entry, list(zip(page.keys, sizes, strict=True)), page.next_page_token)

    # -- delete ---------------------------------------------------------------------------

    def delete(
        self,
        keys: Sequence[ObjectKey],
        *,
        tier: Tier = Tier.L2,
        adapter: str | None = None,
        force: bool = False,
    ) -> DeleteOutcome:
        """Delete `keys` from L1, from one L2 adapter, or both. Idempotent: absent keys are
        skipped silently. In L1, locked and pinned objects stay unless `force` (their memory is
        then freed once the locks go); in L2, locked keys are skipped. The adapter is resolved
        first, so a bad selector changes nothing. An adapter failure is reported in the outcome
        (`error`), not raised."""
        check_delete_batch(len(keys))
        entry = self.adapter(adapter) if tier.includes_l2 else None
        l1_deleted = l1_skipped = 0
        if tier.includes_l1 and keys:
            l1_deleted, l1_skipped = self._delete_l1(keys, force)
        if entry is None:
            return DeleteOutcome(len(keys), l1_deleted, l1_skipped)
        try:
            results = self._storage.delete_from_l2(entry, keys)
        except Exception as exc:  # an adapter's failure is the caller's answer, not a crash
            return DeleteOutcome(
                len(keys), l1_deleted, l1_skipped, 0, entry, error=str(exc) or type(exc).__name__
            )
        return DeleteOutcome(len(keys), l1_deleted, l1_skipped, sum(1 for ok in results if ok), entry)

    def _delete_l1(self, keys: Sequence[ObjectKey], force: bool) -> tuple[int, int]:
        l1 = self._storage.l1
        skipped = 0
        targets = list(keys)
        if not force:
            # An operator's pin keeps a chunk in L1 like a lock does; only `force` overrides it.
            infos = l1.inspect(targets)
            pinned = {k for k, info in zip(targets, infos, strict=True) if info is not None and info.pinned_until is not None}
            if pinned:
                skipped += len(pinned)
                targets = [k for k in targets if k not in pinned]
        results = l1.delete(targets, force=force)
        deleted = sum(1 for r in results if r is OpResult.SUCCESS)
        skipped += sum(1 for r in results if r is OpResult.KEY_IS_LOCKED)
        return deleted, skipped
