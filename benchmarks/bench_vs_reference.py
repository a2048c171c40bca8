"""Our server against LMCache's own, with LMCache's own engine simulator, side by side in one run.

For each client version (0.5.0, 0.5.6): that version's `lmcache bench server --mode cpu` against
that version's `lmcache server` and against ours, alternated round by round (ours first in even
rounds, the reference first in odd ones), in both transfer modes (engine-driven: the engine copies
through the server's shared L1 pool; server-driven, `lmcache_driven`: the server gathers and
scatters the engine's shared KV tensors). Each server is a fresh process per round; each mode
starts with a discarded warm-up run (first-touch page faults, imports). Printed per version and
mode: the p50 of STORE (cold store), RETRIEVE (warm retrieve), LOOKUP (cold and warm), medians
over the rounds, and ours / reference (below 1.0: ours is faster).

    python benchmarks/bench_vs_reference.py [--versions 0.5.0 0.5.6] [--rounds 3] [--sequences 8]

The reference virtualenvs: LMCACHE_REFERENCE_VENV (default ~/.cache/lmcache-reference/venv, with
lmcache==0.5.0) and LMCACHE_REFERENCE_056_VENV (~/.cache/lmcache-reference-056/venv, 0.5.6). The
0.5.6 reference serves engine-driven transfers through a shared pool only when started with
`--supported-transfer-mode auto --shm-name NAME --no-l1-use-lazy` (else its clients fall back to
pickling every chunk), so it is started that way; both references get `--no-l1-use-lazy`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import serverproc  # noqa: E402  (the tests' launchers)
from bench_data_path import READY, wait_prefaulted  # noqa: E402

from lmcache_frontends.testing import free_port  # noqa: E402

VENVS = {
    "0.5.0": Path(os.environ.get("LMCACHE_REFERENCE_VENV", Path.home() / ".cache/lmcache-reference/venv")),
    "0.5.6": Path(os.environ.get("LMCACHE_REFERENCE_056_VENV", Path.home() / ".cache/lmcache-reference-056/venv")),
}
MODES = ("engine_driven", "lmcache_driven")
METRICS = (("STORE", "cold_store"), ("RETRIEVE", "warm_retrieve"), ("LOOKUP cold", "cold_lookup"),
           ("LOOKUP warm", "warm_lookup"))
QUIET = {"LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1"}


@dataclass
class Server:
    name: str
    zmq_url: str
    http_url: str


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        serverproc.stop_process_group(proc, grace=60)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.3)


@contextlib.contextmanager
def our_server(l1_gb: float, workdir: Path) -> Iterator[Server]:
    zmq_port, http_port = free_port(), free_port()
    exe = shutil.which("lmcache-server") or str(Path(sys.executable).with_name("lmcache-server"))
    log = workdir / f"ours-{zmq_port}.log"
    args = [exe, "--port", str(zmq_port), "--http-port", str(http_port), "--l1-size-gb", str(l1_gb)]
    with _process(args, dict(os.environ), log) as proc:
        deadline = time.monotonic() + 120
        while not READY.search(log.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lmcache-server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        http = f"http://127.0.0.1:{http_port}"
        wait_prefaulted(http)
        yield Server("ours", f"tcp://127.0.0.1:{zmq_port}", http)


@contextlib.contextmanager
def reference_server(version: str, l1_gb: float, workdir: Path) -> Iterator[Server]:
    zmq_port, http_port, prom_port = free_port(), free_port(), free_port()
    log = workdir / f"reference-{version}-{zmq_port}.log"
    args = [str(VENVS[version] / "bin" / "lmcache"), "server", "--host", "127.0.0.1", "--port", str(zmq_port),
            "--http-host", "127.0.0.1", "--http-port", str(http_port), "--prometheus-port", str(prom_port),
            "--l1-size-gb", str(l1_gb), "--eviction-policy", "LRU", "--no-l1-use-lazy"]
    if version != "0.5.0":
        args += ["--supported-transfer-mode", "auto", "--shm-name", f"lmcache_bench_ref_{zmq_port}"]
    with _process(args, {**os.environ, **QUIET}, log) as proc:
        http = f"http://127.0.0.1:{http_port}"
        _wait_http(f"{http}/healthcheck", proc, log)
        yield Server(f"reference {version}", f"tcp://127.0.0.1:{zmq_port}", http)


def run_bench(version: str, server: Server, mode: str, start: int, count: int, args: argparse.Namespace,
              workdir: Path) -> dict[str, float] | None:
    """One bench run; the p50 (ms) of each metric. Ours fails unless every checksum matched; a
    reference whose checksums failed gives None."""
    report = workdir / "bench.json"
    report.unlink(missing_ok=True)
    cmd = [str(VENVS[version] / "bin" / "lmcache"), "bench", "server", "--mode", "cpu", "--rpc-url", server.zmq_url,
           "--url", server.http_url, "--transfer-mode", mode, "--num-tokens", str(args.num_tokens),
           "--kvcache-shape-spec", args.shape, "--start", str(start), "--end", str(start + count),
           "--interval", "0", "--format", "json", "--output", str(report), "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **QUIET})
    if not report.exists():
        raise RuntimeError(f"{server.name} {mode}: the bench wrote no report:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    body = json.loads(report.read_text())["metrics"]
    results = body["results"]
    if results["checksum_ok"] != results["total_requests"] or not results["total_requests"]:
        if server.name == "ours":
            raise RuntimeError(f"{server.name} {mode}: {results}")
        # LMCache 0.5.6's own server fails its own bench's checksums in lmcache_driven mode on a
        # CPU-only host: no figure to compare against (printed as such), ours is still checked.
        print(f"  [{server.name} {mode}] checksums failed: {results}", flush=True)
        return None
    return {label: float(body[key][f"{key}_p50"]) for label, key in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", nargs="+", default=["0.5.0", "0.5.6"], choices=sorted(VENVS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=8, help="sequences per measured bench run")
    parser.add_argument("--num-tokens", type=int, default=2048)
    parser.add_argument("--shape", default="(2,256,16,8,128):float16:16",
                        help="--kvcache-shape-spec (default: 16 layers, 8 heads of 128, fp16: 16 MiB per chunk)")
    parser.add_argument("--l1-gb", type=float, default=3.0)
    args = parser.parse_args()
    missing = [v for v in args.versions if not (VENVS[v] / "bin" / "lmcache").exists()]
    if missing:
        sys.exit(f"no reference virtualenv for {', '.join(missing)} (see the module docstring)")
    workdir = Path(tempfile.mkdtemp(prefix="bench-vs-ref-"))
    print(f"host: {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f}; shape {args.shape}, "
          f"{args.num_tokens} tokens, {args.sequences} sequences per run, {args.rounds} rounds")
    try:
        for version in args.versions:
            samples: dict[tuple[str, str, str], list[float]] = {}
            for rnd in range(args.rounds):
                starters = [("ours", lambda: our_server(args.l1_gb, workdir)),
                            ("reference", lambda v=version: reference_server(v, args.l1_gb, workdir))]
                if rnd % 2:
                    starters.reverse()
                for side, start in starters:
                    with start() as server:
                        for m, mode in enumerate(args.modes):
                            base = 10_000 * (rnd + 1) + 1000 * m
                            run_bench(version, server, mode, base, 2, args, workdir)  # warm-up, discarded
                            p50 = run_bench(version, server, mode, base + 100, args.sequences, args, workdir)
                            if p50 is None:
                                continue
                            for label, value in p50.items():
                                samples.setdefault((mode, label, side), []).append(value)
                            print(f"  [{version} round {rnd} {side} {mode}] "
                                  + "  ".join(f"{k} {v:.2f} ms" for k, v in p50.items()), flush=True)
            print(f"\nLMCache {version} bench, p50 ms (median of {args.rounds} rounds; load now "
                  f"{os.getloadavg()[0]:.2f})")
            print(f"  {'mode':15s} {'metric':12s} {'ours':>9s} {'reference':>10s} {'ours/ref':>9s}")
            for mode in args.modes:
                for label, _ in METRICS:
                    ours = statistics.median(samples[(mode, label, "ours")])
                    refs = samples.get((mode, label, "reference"))
                    if not refs:
                        print(f"  {mode:15s} {label:12s} {ours:9.2f} {'failed':>10s} {'-':>9s}")
                        continue
                    ref = statistics.median(refs)
                    print(f"  {mode:15s} {label:12s} {ours:9.2f} {ref:10.2f} {ours / ref:9.2f}")
            print(flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
