"""`lmcache coordinator`: the fleet service (membership, cache events, quotas and eviction, the
key directory and routing scores) as a Flask app served by Waitress, its state in a FleetStore."""
