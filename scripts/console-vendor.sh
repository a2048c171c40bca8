#!/usr/bin/env bash
# Refresh the console's vendored JavaScript libraries from the npm registry (run by hand, then
# commit the result). Each library is pinned; its licence file is copied beside it, and
# src/lmcache_frontends/console/static/vendor/README.md records what was fetched.
#   bash scripts/console-vendor.sh            fetch the pinned versions
#   UPLOT_VERSION=1.6.33 bash scripts/console-vendor.sh   move the pin (then update the README)
set -euo pipefail
cd "$(dirname "$0")/.."
UPLOT_VERSION=${UPLOT_VERSION:-1.6.32}
DEST=src/lmcache_frontends/console/static/vendor/uplot
command -v npm >/dev/null || { echo "[console-vendor] npm is needed (apt-get install npm)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null && tar xzf "uplot-$UPLOT_VERSION.tgz")
mkdir -p "$DEST"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$DEST/"
echo "[console-vendor] uplot@$UPLOT_VERSION -> $DEST"
(cd "$DEST" && sha256sum uPlot.iife.min.js uPlot.min.css LICENSE)
