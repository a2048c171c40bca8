"""The server's settings in sections, one module each (data path, admin, security, readiness,
L1, L2, fleet, observability); `lmcache_frontends.config.ServerConfig` joins them into one flat,
frozen configuration (`config.http_port`), in this order."""
