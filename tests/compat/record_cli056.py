"""Record what LMCache 0.5.6's own CLI prints against the 0.5.6 reference (the cases of
`cli056_cases.py`, in order) into `cli056_outputs.json`. Not a test: run by hand, with the
reference started as in `record_admin056.py` and its bench running in lmcache_driven mode (so a
model is registered for `describe kvcache`):

    python tests/compat/record_cli056.py --url http://127.0.0.1:21080 \\
        --lmcache ~/.cache/lmcache-reference-056/venv/bin/lmcache
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli056_cases import CLI_CASES  # noqa: E402

OUTPUTS = Path(__file__).with_name("cli056_outputs.json")
QUIET_ENV = {"LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--lmcache", required=True, help="the 0.5.6 venv's lmcache script")
    args = parser.parse_args()
    env = {**os.environ, **QUIET_ENV}
    outputs = {}
    for case in CLI_CASES:
        done = subprocess.run([args.lmcache, *case.command(args.url)], capture_output=True, text=True, timeout=120, env=env)
        outputs[case.name] = {"rc": done.returncode, "stdout": done.stdout}
        print(case.name, done.returncode)
    document = {"recorded_from": "LMCache 0.5.6's lmcache CLI against its own server, by tests/compat/record_cli056.py", "outputs": outputs}
    OUTPUTS.write_text(json.dumps(document, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
