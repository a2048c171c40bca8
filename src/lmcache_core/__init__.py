"""lmcache_core: the domain of the KV-cache server (keys, hashing, L1, eviction, quotas, status).

Imports only the standard library plus numpy/blake3/xxhash; everything outer plugs in through
the ports in `lmcache_core.ports`."""

__version__ = "0.1.0"
