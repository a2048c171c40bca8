"""L1: the CPU-memory tier's bookkeeping (objects, TTL locks, batch operations, listeners)."""

from lmcache_core.l1.listener import L1Listener
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult, WriteMode

__all__ = ["L1Listener", "L1Manager", "OpResult", "WriteMode"]
