#!/usr/bin/env bash
# Regenerate the console screenshots of docs/console.md (docs/images/console-*.png): a real
# lmcache-server under `lmcache bench server` traffic and a real `lmcache coordinator` with two
# registered servers, shown by the real pages in headless Chromium (the browser the tests use).
#   bash scripts/console-screenshots.sh          (after `bash scripts/dev.sh test --co -q` made .venv)
# Takes about a minute; binds loopback ports picked by the OS; leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || { echo "[console-screenshots] run 'bash scripts/dev.sh test --co -q' first (it builds $VENV)" >&2; exit 1; }
mkdir -p docs/images
exec "$VENV/bin/python" - <<'PYEOF'
import json, re, subprocess, sys, time, urllib.request
from pathlib import Path

sys.path[:0] = ["tests/e2e", "tests"]
from browser import chromium, open_page, sign_in, wait_refreshed  # noqa: E402
from fleetproc import start_coordinator  # noqa: E402
from serverproc import launch, server_command  # noqa: E402

ADMIN = "screenshots-admin-0123456789"
OUT = Path("docs/images")


def call(url, method="GET", body=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def shot(page, name, **kw):
    if "clip" not in kw:
        page.evaluate("window.scrollTo(0, 0)")
    path = OUT / name
    page.screenshot(path=str(path), **kw)
    print(f"[console-screenshots] {path} ({path.stat().st_size // 1024} KiB)")


server = launch(["--l1-size-gb", "0.0625", "--l2-adapter", '{"type": "mock"}', "--eviction-policy", "IsolatedLRU",
                 "--admin-token", ADMIN], shm_prefix="shots")
coordinator = start_coordinator("--admin-token", ADMIN)
bench = None
try:
    call(f"{server.url}/quota/_default", "PUT", {"limit_gb": 0.04})
    call(f"{server.url}/quota/alice", "PUT", {"limit_gb": 0.5})
    zmq = re.search(r" zmq (tcp://\S+)", server.stderr).group(1)
    bench = subprocess.Popen([*server_command("lmcache"), "bench", "server", "--rpc-url", zmq, "--url", server.url,
                              "--token", ADMIN, "--num-tokens", "1024", "--kvcache-shape-spec",
                              "(2,128,16,8,64):float16:4", "--end", "400", "--interval", "0.05"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with chromium(1280, 1000) as context:
        page, _ = open_page(context, f"{server.url}/ui")
        sign_in(page, ADMIN)
        page.wait_for_selector("#who[data-value='admin']")
        page.select_option("#refresh", "2")
        page.wait_for_function("() => Number(document.getElementById('chart-lookups').dataset.samples) >= 12",
                               timeout=90_000)
        page.select_option("#refresh", "0")
        wait_refreshed(page)
        shot(page, "console-server.png")
        shot(page, "console-traffic.png", clip={"x": 0, "y": page.evaluate("document.getElementById('traffic').getBoundingClientRect().top + window.scrollY - 8"), "width": 1280, "height": 920}, full_page=True)
        page.set_viewport_size({"width": 800, "height": 1000})
        page.evaluate("window.scrollTo(0, 0)")
        wait_refreshed(page)
        shot(page, "console-server-800.png")

        base = coordinator.url
        hashes = [f"{n:02x}" * 32 for n in range(1, 9)]
        keys = [{"chunk_hash_hex": h, "model_name": "meta-llama/Llama-3.1-8B", "kv_rank": 16777472, "cache_salt": ""} for h in hashes]
        for n, instance in enumerate(("node-a", "node-b")):
            call(f"{base}/instances", "POST", {"instance_id": instance, "ip": f"10.0.0.{5 + n}", "http_port": 8080})
        call(f"{base}/events", "POST", {"batches": [
            {"instance_id": "node-a", "incarnation": 1, "seq": 1, "event_type": "store", "tier": "l1", "backend": "dram",
             "entries": [{"key": k, "size_bytes": 2097152} for k in keys]},
            {"instance_id": "node-b", "incarnation": 1, "seq": 1, "event_type": "store", "tier": "l1", "backend": "dram",
             "entries": [{"key": k, "size_bytes": 2097152} for k in keys[:3]]},
            {"instance_id": "node-b", "incarnation": 1, "seq": 2, "event_type": "store", "tier": "l2", "backend": "s3",
             "entries": [{"key": {**k, "cache_salt": "alice"}, "size_bytes": 2097152} for k in keys]},
        ]})
        call(f"{base}/quota/alice", "PUT", {"limit_gb": 1})
        fleet, _ = open_page(context, f"{base}/ui")
        fleet.set_viewport_size({"width": 1280, "height": 1000})
        sign_in(fleet, ADMIN)
        fleet.wait_for_selector("#dir-keys[data-value]")
        fleet.fill("#score-model", "meta-llama/Llama-3.1-8B")
        fleet.select_option("#score-kind", "hashes")
        fleet.fill("#score-prompt", "\n".join(hashes[:5]))
        fleet.click("#score-submit")
        fleet.wait_for_selector("#score-summary[data-value]")
        fleet.select_option("#refresh", "2")
        fleet.wait_for_function("() => Number(document.getElementById('chart-directory').dataset.samples) >= 4", timeout=60_000)
        fleet.select_option("#refresh", "0")
        wait_refreshed(fleet)
        shot(fleet, "console-fleet.png")
finally:
    if bench is not None:
        bench.terminate()
        bench.wait(30)
    coordinator.terminate()
    server.terminate()
PYEOF
