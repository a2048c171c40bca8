"""Record the answers of a running LMCache 0.5.6 server to the cases of `admin056_cases.py`.

Not a test: run by hand against the reference on loopback, once per state, e.g.

    REF_VERSION=0.5.6 REFERENCE_HOME=/tmp/ref-056 VENV=~/.cache/lmcache-reference-056/venv \\
      ZMQ_PORT=21555 HTTP_PORT=21080 L1_GB=1 L2_ADAPTER='{"type":"fs","base_path":"/tmp/ref-l2"}' \\
      ../shared/peer/reference.sh start
    python tests/compat/record_admin056.py --url http://127.0.0.1:21080 --state bare
    # with `reference.sh bench --transfer-mode lmcache_driven ...` running (model test-model):
    python tests/compat/record_admin056.py --url http://127.0.0.1:21080 --state registered
    # against a second reference started without L2_ADAPTER:
    python tests/compat/record_admin056.py --url http://127.0.0.1:21082 --state no_l2

Each run merges its cases into `admin056_vectors.json` beside this file."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from admin056_cases import CASES, Case  # noqa: E402

VECTORS = Path(__file__).with_name("admin056_vectors.json")


def ask(url: str, case: Case) -> dict[str, Any]:
    data: bytes | None = None
    headers: dict[str, str] = {}
    if case.raw is not None:
        data = case.raw.encode()
        headers["Content-Type"] = case.content_type or "application/json"
    elif case.json is not None:
        data = json.dumps(case.json).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url.rstrip("/") + case.path, data=data, method=case.method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", errors="replace")
    return {"status": status, "body": body}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--state", required=True, choices=("bare", "registered", "no_l2"))
    args = parser.parse_args()
    vectors = json.loads(VECTORS.read_text()) if VECTORS.exists() else {"cases": {}}
    vectors["recorded_from"] = "LMCache 0.5.6 (lmcache server, loopback), by tests/compat/record_admin056.py"
    for case in CASES:
        if case.state == args.state:
            vectors["cases"][case.name] = ask(args.url, case)
            print(case.name, vectors["cases"][case.name]["status"])
    vectors["cases"] = dict(sorted(vectors["cases"].items()))
    VECTORS.write_text(json.dumps(vectors, indent=1, sort_keys=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
