"""lmcache-adapter-sqlite: an L2 tier for lmcache-server in a SQLite database."""
