"""The ZeroMQ data path (LMCache 0.5.0 wire protocol); its registrations answer the admin
checksum and prefetch routes through the engine's KV cache registry."""
