#!/usr/bin/env bash
# Install lmcache-server into ./.venv and start it, stop it, or run the whole test suite.
#   bash scripts/dev.sh start [lmcache-server flags...]   install, start, show it answering; Ctrl-C stops it
#   bash scripts/dev.sh stop                              stop the server `start` runs (from another shell)
#   bash scripts/dev.sh test  [pytest args...]            install everything (+ dev tools, Chromium), run every test
# Needs only Python 3.11 and pip. torch: an importable torch is kept (bring your CUDA build);
# otherwise torch==2.13.0 (a CPU build) is installed first, so pip never pulls a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
RUN_DIR=${DEV_RUN_DIR:-$VENV/run}  # the pid file and the ready file of `start`
PIDFILE="$RUN_DIR/lmcache-server.pid"
READY="$RUN_DIR/lmcache-server.ready.json"

say() { echo "[dev.sh] $*"; }

ensure_venv() {
  local extras=$1
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  fi
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    say "installing torch==2.13.0 (CPU build)"
    "$VENV/bin/python" -m pip install -q torch==2.13.0
  fi
  # Editable install: source edits need no reinstall, only a changed pyproject.toml does.
  local stamp="$VENV/.dev-installed${extras}" want have
  want=$(cksum < pyproject.toml)
  # Installed with these extras (or, for none, with any) since pyproject.toml last changed.
  for have in "$stamp" "$VENV"/.dev-installed*; do
    if [ -f "$have" ] && [ "$(cat "$have")" = "$want" ] && { [ "$have" = "$stamp" ] || [ -z "$extras" ]; } \
        && "$VENV/bin/python" -c "import lmcache_frontends" 2>/dev/null; then
      return
    fi
  done
  say "installing lmcache-server (${extras:-no extras})"
  "$VENV/bin/python" -m pip install -q -e ".$extras"
  echo "$want" > "$stamp"
}

# The console's browser tests drive the system's Chromium headless (Playwright never downloads
# one here): install it with apt when we can, else say how; those tests then fail with the same
# message (they do not skip).
ensure_chromium() {
  local browser=${LMCACHE_CHROMIUM:-/usr/bin/chromium}
  [ -x "$browser" ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (the console's browser tests drive it headless)"
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
      [ -x "$browser" ] && return 0
    fi
  fi
  say "no Chromium at $browser: the console's browser tests (tests/e2e/test_console_browser.py) will FAIL." >&2
  say "install it (as root: apt-get install chromium) or set LMCACHE_CHROMIUM to a Chromium binary" >&2
}

# The fleet's tests start a real redis-server (Debian's package) on a free loopback port:
# install it with apt when we can, else say how; those tests then fail (they do not skip).
ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  [ -x /usr/bin/redis-server ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server (the fleet's tests start one on a free loopback port)"
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }; then
      [ -x /usr/bin/redis-server ] && return 0
    fi
  fi
  say "no redis-server: the fleet's Redis tests will FAIL." >&2
  say "install it (as root: apt-get install redis-server)" >&2
}

# The pid of the server `start` runs, when it is alive and really lmcache-server.
running_pid() {
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "lmcache" || return 1
  echo "$pid"
}

# Refuse to start when an address the server would bind is taken, naming the flag to change.
# The flags, LMCACHE_* variables and --config file are read exactly as the server reads them.
check_ports() {
  "$VENV/bin/python" - "$@" <<'PYEOF'
import socket, sys
from lmcache_core.errors import LMCacheError
from lmcache_frontends.config import load_config
try:
    cfg = load_config(sys.argv[1:], prog="lmcache-server")
except (LMCacheError, SystemExit):
    sys.exit(0)  # a bad flag or --help: the server itself answers
for what, host, port, flag in (("admin API", cfg.http_host, cfg.http_port, "--http-port"),
                               ("ZeroMQ data path", cfg.host, cfg.port, "--port")):
    if port == 0:
        continue
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            print(f"[dev.sh] cannot start: {host}:{port} (the {what}, {flag}) is in use: {exc.strerror}.\n"
                  f"[dev.sh] Stop whatever listens there, or choose another port: "
                  f"bash scripts/dev.sh start {flag} <port>", file=sys.stderr)
            sys.exit(1)
PYEOF
}

# Once the server wrote its ready file: show its health and status, read from the admin URL it
# actually serves (whatever --http-port, LMCACHE_HTTP_PORT or --config said).
show_ready() {
  "$VENV/bin/python" - "$READY" <<'PYEOF'
import json, sys, urllib.request
info = json.load(open(sys.argv[1]))
base = info["admin_url"]
health = json.load(urllib.request.urlopen(base + "/healthcheck", timeout=5))
print(f"[dev.sh] GET {base}/healthcheck -> {json.dumps(health)}")
try:
    status = json.load(urllib.request.urlopen(base + "/status", timeout=5))
    l1 = status["storage_manager"]["l1_manager"]
    print(f"[dev.sh] GET {base}/status -> is_healthy={status['is_healthy']} "
          f"l1 objects={l1['total_object_count']} l1 capacity={l1['memory_total_bytes']} bytes")
except urllib.error.HTTPError as exc:  # a read token is configured
    print(f"[dev.sh] GET {base}/status -> {exc.code} (pass a token: lmcache status --url {base} --token ...)")
print(f"[dev.sh] server running (pid {info['pid']}, zmq {info['zmq_url']}); "
      "Ctrl-C or `bash scripts/dev.sh stop` stops it")
PYEOF
}

cmd=${1:-}
shift || true
case "$cmd" in
  start)
    ensure_venv ""
    mkdir -p "$RUN_DIR"
    if pid=$(running_pid); then
      say "a dev server is already running (pid $pid); stop it first: bash scripts/dev.sh stop" >&2
      exit 1
    fi
    check_ports "$@"
    rm -f "$READY"
    # Its own process group: a terminal's Ctrl-C reaches this script only, which passes exactly
    # one SIGINT on (two signals would make the server skip the L2 write-back).
    set -m
    "$VENV/bin/lmcache-server" --ready-file "$READY" "$@" &
    pid=$!
    set +m
    echo "$pid" > "$PIDFILE"
    trap 'kill -INT "$pid" 2>/dev/null || true' INT
    trap 'kill -TERM "$pid" 2>/dev/null || true' TERM HUP
    set +e
    shown=""
    while [ -z "$shown" ] && kill -0 "$pid" 2>/dev/null; do
      if [ -f "$READY" ]; then
        show_ready || say "the server is up but did not answer its probes"
        shown=1
      else
        sleep 0.2
      fi
    done
    # A trapped signal interrupts `wait` (status > 128): wait again until the server has exited.
    while :; do
      wait "$pid"
      rc=$?
      [ "$rc" -le 128 ] && break
      kill -0 "$pid" 2>/dev/null && continue
      wait "$pid" 2>/dev/null
      again=$?
      [ "$again" -ne 127 ] && rc=$again
      break
    done
    [ "$(cat "$PIDFILE" 2>/dev/null)" = "$pid" ] && rm -f "$PIDFILE"
    if [ -z "$shown" ] && [ "$rc" -ne 0 ]; then
      say "lmcache-server exited with status $rc before it was ready (its error is above)" >&2
    fi
    exit "$rc"
    ;;
  stop)
    if ! pid=$(running_pid); then
      say "no dev server is running (nothing in $PIDFILE)"
      exit 0
    fi
    say "stopping lmcache-server (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || { say "stopped"; exit 0; }
      sleep 0.2
    done
    say "lmcache-server (pid $pid) is still shutting down after 60 s" >&2
    exit 1
    ;;
  test)
    ensure_venv "[dev]"
    ensure_chromium
    ensure_redis
    say "import contracts"
    "$VENV/bin/lint-imports" --no-cache
    say "pytest"
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then say "FAIL: no tests were collected"; exit 1; fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash scripts/dev.sh start [server flags] | stop | test [pytest args]" >&2
    exit 2
    ;;
esac
