"""The fleet domain: membership leases, cache events, the key directory, quotas, eviction planning
and prefix-aware routing scores, behind the FleetStore port (Redis or in-memory)."""
