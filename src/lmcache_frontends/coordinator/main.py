"""`lmcache-coordinator` / `lmcache coordinator`: run the fleet coordinator until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import threading
from collections.abc import Sequence

from lmcache_core.errors import LMCacheError
from lmcache_frontends.coordinator.config import ENV_PREFIX, CoordinatorConfig, load, parse
from lmcache_frontends.safety import check_http_exposure
from lmcache_frontends.server import _SignalHandlers as SignalHandlers  # one signal policy for both
from lmcache_frontends.server import configure_logging

PROG = "lmcache coordinator"
log = logging.getLogger("lmcache_frontends.coordinator")


def serve(config: CoordinatorConfig, *, prog: str = PROG, stop_event: threading.Event | None = None) -> int:
    """Run until `stop_event` is set or a signal arrives; 0 after a clean stop, 1 when it cannot start."""
    from lmcache_frontends.admin.auth import reload_token_files
    from lmcache_frontends.coordinator.runtime import CoordinatorRuntime

    configure_logging(config.log_level.upper())
    try:
        warnings = check_http_exposure(
            config,
            what="the coordinator API",
            host_flag="--host",
            env_hint=f"{ENV_PREFIX}ADMIN_TOKEN/{ENV_PREFIX}READ_TOKEN",
            harm="register servers, change quotas and delete cached keys",
        )
        runtime = CoordinatorRuntime(config)
    except (LMCacheError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    for warning in warnings:
        log.warning("SECURITY: %s", warning)
    if config.store_kind == "memory":
        log.warning("the embedded memory store is a one-node trial: state is lost on exit and not shared; use --redis-url")
    stop = stop_event or threading.Event()
    signals = SignalHandlers(stop)
    signals.install()
    try:
        runtime.start()
        # Startup objects (modules, the app) move out of the collector's sight: a full
        # collection then walks only what requests allocate (fewer long pauses on the
        # scoring path).
        gc.freeze()
        print(f"{prog}: listening on {runtime.url} (store {config.store_kind})", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            if signals.reload_requested:
                signals.reload_requested = False
                reload_token_files()
            if not runtime.http.running:
                log.error("the HTTP server stopped unexpectedly; shutting down")
                runtime.stop()
                return 1
        log.info("shutting down%s", f" ({signals.received})" if signals.received else "")
        runtime.stop()
        return 0
    finally:
        signals.restore()


def run_namespace(namespace: argparse.Namespace, prog: str = PROG) -> int:
    try:
        config = load({k: v for k, v in vars(namespace).items() if not k.startswith("_")})
    except LMCacheError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    return serve(config, prog=prog)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lmcache-coordinator` console script."""
    try:
        config = parse(argv, prog="lmcache-coordinator")
    except LMCacheError as exc:
        print(f"lmcache-coordinator: error: {exc}", file=sys.stderr)
        return 1
    return serve(config, prog="lmcache-coordinator")


if __name__ == "__main__":
    sys.exit(main())
