"""Record a LMCache 0.5.6 server's answers to the L1-on-Device-DAX steps of `l1dax056_cases.py`.

Not a test: run by hand against a fresh reference whose L1 is `primary.img` of a scratch
directory (this script makes the device files first, so make them, then start, then record):

    python tests/compat/record_l1dax056.py --dax-dir /tmp/l1dax-ref --prepare-only
    REF_VERSION=0.5.6 REFERENCE_HOME=/tmp/ref-l1dax-056 VENV=~/.cache/lmcache-reference-056/venv \\
      ZMQ_PORT=27555 HTTP_PORT=27080 L1_GB=0.0625 \\
      EXTRA_ARGS='--l1-devdax-path /tmp/l1dax-ref/primary.img --no-l1-use-lazy --shm-name=' \\
      ../shared/peer/reference.sh start
    python tests/compat/record_l1dax056.py --dax-dir /tmp/l1dax-ref --url http://127.0.0.1:27080 \\
      --rpc-url tcp://127.0.0.1:27555 --ref-venv ~/.cache/lmcache-reference-056/venv

The STORE step runs the reference's own bench (two engine-driven requests of 512 tokens); the
engine-driven registration reply is asked for with the reference's own request client. The
answers go to `l1dax056_vectors.json` beside this file."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from l1dax056_cases import STEPS, STORE, Step, prepare_devices  # noqa: E402

VECTORS = Path(__file__).with_name("l1dax056_vectors.json")

# Run by the reference's interpreter: its request client registers an engine-driven context.
_REGISTER = """
import json, sys
from lmcache.v1.multiprocess.custom_types import RegisterEngineDrivenContextPayload
from lmcache.v1.multiprocess.transport.zmq_impl import create_request_client
client = create_request_client(sys.argv[1])
payload = RegisterEngineDrivenContextPayload(instance_id=4242, model_name="test-model", world_size=1, block_size=16,
                                             num_layers=32, hidden_dim_size=1024, dtype_str="float16", use_mla=False)
reply = client.register_kv_cache_engine_driven_context(payload).result(timeout=30)
print(json.dumps({"shm_name": reply.shm_name, "pool_size": reply.pool_size}))
"""


def ask(url: str, step: Step, dax_dir: str) -> dict[str, Any]:
    body = step.body(dax_dir)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url.rstrip("/") + step.path, data=data, method=step.method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    return {"status": status, "body": json.loads(raw)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dax-dir", required=True)
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--url")
    parser.add_argument("--rpc-url")
    parser.add_argument("--ref-venv", type=Path)
    args = parser.parse_args()
    os.makedirs(args.dax_dir, exist_ok=True)
    if args.prepare_only:
        prepare_devices(args.dax_dir)
        return 0
    python, lmcache = args.ref_venv / "bin" / "python", args.ref_venv / "bin" / "lmcache"
    env = dict(os.environ, LMCACHE_DISABLE_BANNER="1", LMCACHE_TRACK_USAGE="false")
    steps: dict[str, Any] = {}
    for step in STEPS:
        if step.method == STORE:
            subprocess.run(
                [str(lmcache), "bench", "server", "--mode", "cpu", "--transfer-mode", "engine_driven",
                 "--rpc-url", args.rpc_url, "--url", args.url, "--start", "0", "--end", "2", "--interval", "0",
                 "--format", "json", "-q"],
                check=True, env=env, timeout=300,
            )
            continue
        steps[step.name] = ask(args.url, step, args.dax_dir)
        print(step.name, steps[step.name]["status"])
    reply = subprocess.run([str(python), "-c", _REGISTER, args.rpc_url], check=True, env=env, timeout=120,
                           capture_output=True, text=True).stdout.strip().splitlines()[-1]
    vectors = {
        "recorded_from": "LMCache 0.5.6 (lmcache server --l1-devdax-path <file> --l1-size-gb 0.0625 "
        "--no-l1-use-lazy --shm-name '', loopback), by tests/compat/record_l1dax056.py",
        "dax_dir": args.dax_dir,
        "engine_driven_registration_reply": json.loads(reply),
        "steps": steps,
    }
    VECTORS.write_text(json.dumps(vectors, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
