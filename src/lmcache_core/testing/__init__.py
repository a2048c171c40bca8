"""Pure-python test doubles of the core's ports, for unit tests of the core and of adapters."""

from lmcache_core.testing.memory import BytearrayMemoryPool

__all__ = ["BytearrayMemoryPool"]
