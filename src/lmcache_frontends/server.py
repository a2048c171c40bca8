"""`lmcache-server`: load the configuration, bootstrap, serve until SIGINT/SIGTERM, shut down cleanly."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from lmcache_core.errors import LMCacheError, PluginError
from lmcache_frontends.config import ServerConfig, config_from_namespace, load_config
from lmcache_frontends.safety import check_exposure, security_status

if TYPE_CHECKING:
    from lmcache_core.plugin import Endpoint
    from lmcache_frontends.admin.server import AdminServer
    from lmcache_frontends.bootstrap import AdminContext, Services

log = logging.getLogger("lmcache_frontends.server")

PROG = "lmcache-server"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_WATCH_INTERVAL_S = 0.5


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lmcache-server` console script; returns the exit code. Run as the
    script (`argv` None: the command line), it may re-execute itself once first (see
    reexec_with_copy_tunables); called with an explicit `argv` (embedded), it never does."""
    try:
        config = load_config(argv, prog=PROG)
    except LMCacheError as exc:
        return _fail(PROG, exc)
    if argv is None:
        reexec_with_copy_tunables(config, ["-m", "lmcache_frontends.server", *sys.argv[1:]])
    return serve(config, prog=PROG)


def main_from_namespace(
    namespace: argparse.Namespace,
    *,
    prog: str,
    env: Mapping[str, str] | None = None,
    reexec_args: Sequence[str] | None = None,
) -> int:
    """Run the server from flags parsed elsewhere (`lmcache server`); `reexec_args` run the same
    command again under a new interpreter (see reexec_with_copy_tunables)."""
    try:
        config = config_from_namespace(namespace, env)
    except LMCacheError as exc:
        return _fail(prog, exc)
    if reexec_args is not None:
        reexec_with_copy_tunables(config, reexec_args)
    return serve(config, prog=prog)


_REEXEC_MARK = "_LMCACHE_SERVER_REEXECUTED"


def reexec_with_copy_tunables(config: ServerConfig, args: Sequence[str]) -> None:
    """Replace this process (same pid, same stdio) with `python <args>` under a glibc
    non-temporal copy threshold of `--nt-copy-threshold` bytes, unless it is 0, already in
    effect, the platform has no such tunable, or this process is that re-execution. glibc
    reads its tunables only when a process starts; see lmcache_adapters.transfer.ntcopy."""
    from lmcache_adapters.transfer import ntcopy

    threshold = config.nt_copy_threshold
    if not threshold or os.environ.get(_REEXEC_MARK) or not ntcopy.supported():
        return
    if ntcopy.non_temporal_threshold() == threshold:
        return
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ntcopy.tunables_with_threshold(env.get("GLIBC_TUNABLES", ""), threshold)
    env[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *args], env)
    except OSError as exc:  # serve on, with torch's copies
        print(f"{PROG}: warning: cannot re-execute with {ntcopy.TUNABLE}: {exc}", file=sys.stderr)


def configure_logging(level: str) -> None:
    """Log to stderr at `level` (a no-op for handlers when the host process configured logging)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger().setLevel(level)


def serve(
    config: ServerConfig,
    *,
    prog: str = PROG,
    stop_event: threading.Event | None = None,
    on_ready: Callable[[Services, AdminServer], None] | None = None,
) -> int:
    """Run the server for `config` until `stop_event` is set or SIGINT/SIGTERM arrives (when
    called on the main thread). Returns 0 after a clean shutdown, 1 when it cannot start.

    The admin API binds first and answers 503 (engine not initialized) while the stack is
    built, as probes expect; a busy admin port fails before any L1 memory is allocated."""
    # Imported here, not at the top: a bad flag should be reported without loading the stack.
    from lmcache_adapters.plugin_manager import LMCachePluginManager
    from lmcache_frontends.bootstrap import AdminContext, bootstrap

    configure_logging(config.log_level)
    try:
        security_warnings = check_exposure(config)  # before anything binds: nothing gets exposed
    except LMCacheError as exc:
        return _fail(prog, exc)
    for warning in security_warnings:
        log.warning("SECURITY: %s", warning)
    stop = stop_event or threading.Event()
    signals = _SignalHandlers(stop)
    signals.install()
    try:
        try:
            plugins = LMCachePluginManager(load_entrypoints=True)
            frontends = plugins.frontend_registry()
            context = AdminContext(config, plugins, frontends)
            admin = _start_admin(context)
        except (LMCacheError, OSError) as exc:
            return _fail(prog, exc)
        try:
            services = bootstrap(config, plugins=plugins, frontends=frontends)
        except (LMCacheError, OSError) as exc:  # bad config, plugin, /dev/shm: the operator's to fix
            admin.stop()
            return _fail(prog, exc)
        except BaseException:
            admin.stop()
            raise
        services.on_close("admin HTTP server", admin.stop)
        context.attach(services)
        signals.on_repeat = services.storage.abandon_write_back
        if signals.repeated_at is not None:  # signalled twice while it was starting
            services.storage.abandon_write_back()
        block = security_status(security_warnings, config)
        services.engine.add_status_contributor("security", lambda: block)
        try:
            _start_server_frontends(services)
        except (LMCacheError, OSError) as exc:
            services.close()
            return _fail(prog, exc)
        if services.fleet is not None:  # registers the ports really bound (0 = a free one)
            services.fleet.start(http_port=admin.port, endpoints=_endpoints(services))

        log.info(_ready_line(prog, services, admin))
        if config.ready_file:
            try:
                _write_ready_file(config.ready_file, services, admin)
            except OSError as exc:
                services.close()
                return _fail(prog, OSError(f"cannot write --ready-file {config.ready_file}: {exc.strerror or exc}"))
            services.on_close("ready file", functools.partial(_remove_file, config.ready_file))
        if on_ready is not None:
            on_ready(services, admin)
        exit_code = 0
        while not stop.wait(_WATCH_INTERVAL_S):
            if signals.reload_requested:  # SIGHUP: re-read token files here, not in the handler
                signals.reload_requested = False
                from lmcache_frontends.admin.auth import reload_token_files

                reload_token_files()
            if not admin.running:
                log.error("the admin HTTP server stopped unexpectedly; shutting down")
                exit_code = 1
                break
        log.info("shutting down%s", f" ({signals.received})" if signals.received else "")
        watchdog = None
        if signals.installed and stop_event is None:  # never os._exit() a process that embeds us
            watchdog = _ShutdownWatchdog(prog, services, signals, config.shutdown_drain_seconds + _SHUTDOWN_GRACE_S)
            watchdog.start()
        try:
            services.close()
        finally:
            if watchdog is not None:
                watchdog.done()
        log.info("stopped")
        return exit_code
    finally:
        signals.restore()


def _start_admin(context: AdminContext) -> AdminServer:
    from lmcache_frontends.admin.app import create_app
    from lmcache_frontends.admin.server import AdminServer

    config = context.config
    try:
        admin = AdminServer(create_app(context), config.http_host, config.http_port)
    except OSError as exc:
        raise OSError(
            f"cannot serve the admin API on {config.http_host}:{config.http_port} (--http-host/--http-port): "
            f"{exc.strerror or exc}"
        ) from exc
    admin.start()
    return admin


def _start_server_frontends(services: Services) -> None:
    """Start every long-running frontend plugins registered (the ZeroMQ data path) as components
    of the application's lifecycle: each is stopped by services.close() before the engine (last
    started, first stopped)."""
    for name, factory in services.frontends.servers.items():
        try:
            frontend = factory(services)
            services.lifecycle.add(f"frontend {name}", start=frontend.start, stop=frontend.stop)
        except (LMCacheError, OSError):
            raise
        except Exception as exc:  # e.g. zmq.ZMQError for a busy --port: one line, not a traceback
            log.debug("frontend %s failed to start", name, exc_info=True)
            raise PluginError(f"frontend {name!r} failed to start: {type(exc).__name__}: {exc}") from exc
        services.engine.add_status_contributor(name, _frontend_status(name, frontend))
        services.server_frontends[name] = frontend


def _frontend_status(name: str, frontend: Any) -> Callable[[], dict[str, Any]]:
    def contribute() -> dict[str, Any]:
        report = frontend.report_status()
        return {name: report, "is_healthy": bool(report.get("is_healthy", False))}

    return contribute


def _endpoints(services: Services) -> dict[str, Endpoint]:
    """Every server frontend's endpoints by label, in the order the frontends started."""
    from lmcache_core.plugin import ServerFrontend

    endpoints: dict[str, Endpoint] = {}
    for frontend in services.server_frontends.values():
        if isinstance(frontend, ServerFrontend):  # a plugin's frontend may predate endpoints()
            endpoints.update(frontend.endpoints())
    return endpoints


def _ready_line(prog: str, services: Services, admin: AdminServer) -> str:
    from lmcache_core.plugin import ServerFrontend

    parts = [f"admin {admin.url} (status: {admin.url}/status)"]
    for name, frontend in services.server_frontends.items():
        if isinstance(frontend, ServerFrontend):
            parts.extend(f"{label} {e.url}" for label, e in frontend.endpoints().items() if e.url is not None)
        else:
            parts.append(f"{name} started")
    if not services.server_frontends:
        parts.append("data path: not enabled")
    pool = services.memory_pool
    parts.append(f"l1 {round(pool.capacity_bytes / (1 << 30), 3)} GiB")
    storage = services.storage
    if storage.l2_adapters:
        # The first backend probes run right after start; wait for them briefly, so a missing
        # bucket or an unwritable path shows here and not only in /readyz.
        storage.l2_health.wait_first_round(services.config.readyz_timeout_seconds)
        problems = [
            f"l2:{e.index}:{e.name} {r['error']}"
            for e in storage.l2_adapters
            if (r := storage.l2_health.result(e)) is not None and r["error"]
        ]
        if problems:
            parts.append("(NOT READY: " + "; ".join(problems) + ")")
    return f"{prog} ready: " + " ".join(parts)


def _fail(prog: str, exc: BaseException) -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 1


class _SignalHandlers:
    """The first SIGINT/SIGTERM sets the stop event (a clean shutdown); later ones, from any mix
    of the two (a terminal's Ctrl-C plus a supervisor's SIGTERM, an impatient operator), make
    that shutdown hurry: it stops waiting for the L2 write-back (`on_repeat`), and the
    watchdog ends a shutdown still stuck a few seconds later. Installed only on the main
    thread, where Python allows it. Handlers only set flags: they may run while the main
    thread holds any lock."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._previous: dict[int, Any] = {}
        self.received: str = ""
        self.count = 0
        self.repeated_at: float | None = None
        """time.monotonic() of the first signal that arrived during the shutdown."""
        self.on_repeat: Callable[[], None] | None = None
        # A plain flag, not an Event: a handler must not take a lock the main thread may hold.
        self.reload_requested = False

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        if hasattr(signal, "SIGHUP"):
            self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._handle_hup)

    def _handle_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.count += 1
        if not self._stop.is_set():
            self.received = name
            self._stop.set()
            return
        if self.repeated_at is None:
            self.repeated_at = time.monotonic()
        # Not via logging: the handler may run while the logging lock is held.
        os.write(2, f"{PROG}: {name} again: already shutting down; not waiting for the L2 write-back\n".encode())
        if self.on_repeat is not None:
            self.on_repeat()


# A shutdown may take the L2 drain plus this long (stopping threads, closing adapters) before
# the watchdog ends it; after a repeated signal, _HURRIED_SHUTDOWN_S.
_SHUTDOWN_GRACE_S = 20.0
_HURRIED_SHUTDOWN_S = 5.0


class _ShutdownWatchdog:
    """Ends a shutdown that hangs (an adapter's close() stuck on a dead endpoint): it names the
    step, still removes the L1 segment and the ready file, and exits with status 1."""

    def __init__(self, prog: str, services: Services, signals: _SignalHandlers, limit_s: float) -> None:
        self._prog = prog
        self._services = services
        self._signals = signals
        self._limit_s = limit_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="lmcache-shutdown-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def done(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        started = time.monotonic()
        while not self._done.wait(0.1):
            now = time.monotonic()
            hurried = self._signals.repeated_at
            if now - started > self._limit_s or (
                hurried is not None and now - max(hurried, started) > _HURRIED_SHUTDOWN_S
            ):
                self._give_up()

    def _give_up(self) -> None:
        step = self._services.closing_step or "the server"
        os.write(2, f"{self._prog}: shutdown stuck while closing {step}; removing the L1 segment and exiting\n".encode())
        from lmcache_adapters.memory import SharedMemoryPool

        pool = self._services.memory_pool
        if isinstance(pool, SharedMemoryPool):
            pool.unlink_segment()
        if self._services.config.ready_file:
            _remove_file(self._services.config.ready_file)
        os._exit(1)


def _write_ready_file(path: str, services: Services, admin: AdminServer) -> None:
    """Atomically write what a script needs to reach this server (see --ready-file)."""
    pool = services.memory_pool
    info: dict[str, Any] = {"pid": os.getpid(), "admin_url": admin.url}
    # `zmq_url` and `zmq_ipc_url` from the data path: `<label>_url` of every frontend endpoint.
    info.update({f"{label.replace('-', '_')}_url": e.url for label, e in _endpoints(services).items()})
    info["l1_shm_name"] = pool.report_status().get("shm_name")
    info["l1_capacity_bytes"] = pool.capacity_bytes
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".ready-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
            f.write("\n")
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        _remove_file(temp)
        raise


def _remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)


if __name__ == "__main__":
    sys.exit(main())
