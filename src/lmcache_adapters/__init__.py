"""lmcache_adapters: the driven side (L2 storage adapters, memory pool and KV transfer, metrics sink)."""
