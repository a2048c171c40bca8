"""The ZeroMQ data path (LMCache 0.5.0 wire protocol) and its `/kvcache/check` route."""
