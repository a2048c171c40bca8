#!/usr/bin/env bash
# Install lmcache-server into ./.venv and start it, or run the whole test suite.
#   bash scripts/dev.sh start [lmcache-server flags...]   install, start, show it answering
#   bash scripts/dev.sh test  [pytest args...]            install everything, run every test
# Needs only Python 3.11 and pip. torch: an importable torch is kept (bring your CUDA build);
# otherwise torch==2.13.0 (a CPU build) is installed first, so pip never pulls a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "[dev.sh] installing torch==2.13.0 (CPU build)"
    "$VENV/bin/python" -m pip install -q torch==2.13.0
  fi
  echo "[dev.sh] installing lmcache-server ($1)"
  "$VENV/bin/python" -m pip install -q -e ".$1"
}

cmd=${1:-}
shift || true
case "$cmd" in
  start)
    ensure_venv ""
    HTTP_PORT=${LMCACHE_HTTP_PORT:-8080}
    "$VENV/bin/lmcache-server" "$@" &
    pid=$!
    trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM
    for _ in $(seq 1 100); do
      if "$VENV/bin/python" - "$HTTP_PORT" <<'PYEOF' 2>/dev/null; then break; fi
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
health = json.load(urllib.request.urlopen(base + "/healthcheck", timeout=1))
status = json.load(urllib.request.urlopen(base + "/status", timeout=2))
l1 = status["storage_manager"]["l1_manager"]
print(f"[dev.sh] GET {base}/healthcheck -> {json.dumps(health)}")
print(f"[dev.sh] GET {base}/status -> is_healthy={status['is_healthy']} "
      f"l1 objects={l1['total_object_count']} l1 capacity={l1['memory_total_bytes']} bytes")
print("[dev.sh] server running; Ctrl-C stops it")
PYEOF
      kill -0 $pid 2>/dev/null || { wait $pid; exit $?; }
      sleep 0.2
    done
    wait $pid
    ;;
  test)
    ensure_venv "[test]"
    echo "[dev.sh] import contracts"
    "$VENV/bin/lint-imports" --no-cache
    echo "[dev.sh] pytest"
    set +e
    "$VENV/bin/python" -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then echo "[dev.sh] FAIL: no tests were collected"; exit 1; fi
    exit "$rc"
    ;;
  *)
    echo "usage: bash scripts/dev.sh start [server flags] | test [pytest args]" >&2
    exit 2
    ;;
esac
