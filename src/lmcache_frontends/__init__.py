"""lmcache_frontends: the driving side (admin HTTP server, CLI) and the composition root."""
