"""The L2 side of the storage manager: adapter entries and the store, prefetch and eviction controllers."""
