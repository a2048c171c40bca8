"""ClearService: drop L1 objects (everything, one tenant or one model), locked ones too on `force`."""

from __future__ import annotations

from lmcache_core.cache_ops.tiers import Tier, require_tier
from lmcache_core.storage_manager import StorageManager


class ClearService:
    """Clears the L1 tier; L2 keeps its objects (delete them by key with ObjectService)."""

    def __init__(self, storage: StorageManager) -> None:
        self._storage = storage

    def clear(
        self,
        *,
        tier: Tier = Tier.L1,
        force: bool = False,
        cache_salt: str | None = None,
        model_name: str | None = None,
    ) -> int:
        """Remove the (matching) L1 objects and return how many. Without `force`, locked and
        pinned objects stay; with it they go too, their memory freed once their locks are
        released, so an in-flight transfer never writes into reused memory. InvalidRequestError
        for a tier other than L1."""
        require_tier(tier, Tier.L1)
        return self._storage.clear_l1(force=force, cache_salt=cache_salt, model_name=model_name)
