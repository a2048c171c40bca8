"""What the operator console costs the server: CPU time of a real `lmcache-server` process while the
real page polls it in headless Chromium at the default interval, against the same server idle.
Target: under 1 % of one core.

Segments alternate (idle, page open, idle, page open, ...) so drift on a shared machine hits both
sides; CPU time is the process's own (utime + stime of every thread, from /proc), so other
processes on the machine do not count. The page signs in with an admin token, as an operator's
would, and reads every route it shows (/status, /readyz, /periodic-threads, /metrics, /quota,
/audit/events).

    python benchmarks/bench_console_cpu.py [--seconds 60] [--rounds 1] [--interval 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

for _p in (Path(__file__).resolve().parents[1] / "tests" / "e2e", Path(__file__).resolve().parents[1] / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
from browser import chromium, open_page, sign_in  # noqa: E402
from serverproc import launch  # noqa: E402

TOKEN = "bench-console-admin-0123456789"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(pid: int, seconds: float) -> float:
    """Percent of one core the process used over `seconds` of wall time."""
    start_cpu, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)  # measuring another process over a fixed window
    return 100.0 * (cpu_seconds(pid) - start_cpu) / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each segment")
    parser.add_argument("--rounds", type=int, default=1, help="idle/page pairs")
    parser.add_argument("--interval", default="5", help="the page's refresh interval (its default: 5)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    server = launch(["--l2-adapter", '{"type": "mock"}', "--admin-token", TOKEN], shm_prefix="benchconsole")
    pid = server.proc.pid
    idle: list[float] = []
    polled: list[float] = []
    refreshes = 0
    try:
        time.sleep(5)  # start-up work (the L1 prefault) is not the console's
        with chromium(1280, 900) as context:
            for _ in range(args.rounds):
                idle.append(measure(pid, args.seconds))
                page, log = open_page(context, f"{server.url}/ui")
                sign_in(page, TOKEN)
                page.wait_for_selector("#who[data-value='admin']")
                page.select_option("#refresh", args.interval)
                page.wait_for_selector("#l1-capacity[data-value]")
                before = sum(n for u, n in log.counts.items() if u.endswith("/status"))
                polled.append(measure(pid, args.seconds))
                page.evaluate("0")  # the driver delivers the page's queued response events now
                refreshes += sum(n for u, n in log.counts.items() if u.endswith("/status")) - before
                page.close()
    finally:
        server.terminate()
    result: dict[str, Any] = {
        "segment_seconds": args.seconds,
        "rounds": args.rounds,
        "interval_seconds": float(args.interval),
        "idle_cpu_percent": round(statistics.median(idle), 3),
        "polled_cpu_percent": round(statistics.median(polled), 3),
        "console_cpu_percent": round(statistics.median(polled) - statistics.median(idle), 3),
        "refreshes": refreshes,
        "cpu_ms_per_refresh": round(
            10.0 * (sum(polled) - sum(idle)) * args.seconds / max(refreshes, 1), 2
        ),
        "idle_segments": [round(v, 3) for v in idle],
        "polled_segments": [round(v, 3) for v in polled],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    ok = result["console_cpu_percent"] < 1.0
    print(f"console polling costs the server {result['console_cpu_percent']:.2f} % of one core "
          f"({'under' if ok else 'OVER'} the 1 % target)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
