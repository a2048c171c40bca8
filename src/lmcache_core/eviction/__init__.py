"""Eviction: policies (LRU, IsolatedLRU, noop) and the controller thread that applies them."""
