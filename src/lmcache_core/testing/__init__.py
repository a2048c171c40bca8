"""Pure-python test doubles of the core's ports, and the polling helper, for tests of every ring."""

from lmcache_core.testing.memory import BytearrayMemoryPool
from lmcache_core.testing.poll import poll_until

__all__ = ["BytearrayMemoryPool", "poll_until"]
