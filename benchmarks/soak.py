"""Soak and fault run: engine clients with byte-exact checksums against a real lmcache-server
while an operator churns it, then `kill -9` mid-write-back and a restart, then an S3 outage.

Three phases, each bounded in time and count, everything on 127.0.0.1:

1. churn: `--clients` engine clients look up, retrieve (verifying every byte) and store chunks
   for three tenants (cache salts) over an fs L2 tier, while an operator loop calls
   `POST /clear-cache` (all, or one salt), `PUT`/`DELETE /quota/<salt>` (IsolatedLRU, so quota
   changes trim L1), `DELETE /l2` (keys taken from `GET /l2/keys`) and `GET /status`. L1 is small,
   so the eviction controller runs under pressure as well.
2. crash: the operator stops; clients store fresh chunks; once the store controller reports
   write-backs queued or in flight, the soak lists `GET /l2/keys` (the *acknowledged* set: a key
   listed there is a write-back the server reported complete) and at once sends SIGKILL. The server
   restarts on the same fs directory and state dir; every acknowledged key must be listed again and
   served back byte for byte (lookup -> L2 prefetch -> retrieve).
3. s3 outage: a server with an s3 L2 tier on moto; clients and operator run, moto is stopped for a
   while (clients keep going: L2 misses, never hangs), then restarted; the server must heal by itself.

Definitions (see docs/soak.md): a *corrupt chunk* is any retrieved chunk whose bytes differ from
the content derived from (cache salt, token family, chunk index) — so a chunk served to the wrong
tenant is corrupt too; an *acknowledged L2 write lost* is an acknowledged key that after the restart
is not listed or not served with its bytes (no operator `DELETE /l2` runs in that window); a
*server crash* is a server process exiting without being told to, or `/healthcheck` not answering
for `--health-deadline` seconds. Exit status 1 when any of those three counts is not zero.

    python benchmarks/soak.py [--duration 140] [--clients 4] [--l1-size-gb 0.03125] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import torch

from lmcache_core.hashing import TokenHasher
from lmcache_frontends.client import EngineDrivenContext, LMCacheClient, make_key

_TESTS = Path(__file__).resolve().parents[1] / "tests"
for _p in (_TESTS, _TESTS / "e2e"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
from serverproc import READY_RE, START_TIMEOUT_S, ServerProcess, pump_stderr, server_command  # noqa: E402

from s3_server import FAKE_CREDENTIALS, MotoServer, restart_moto, start_moto  # noqa: E402

MODEL = "soak/model"
CHUNK = 64  # tokens per chunk
LAYERS = 2
HIDDEN = 128  # 2 x 2 layers x 64 tokens x 128 x fp16 = 64 KiB per chunk
CHUNKS_PER_FAMILY = 4
SALTS = ("alice", "bob", "")
BUCKET = "soak-kv"
ZMQ_RE = re.compile(r"zmq (tcp://\S+)")
CLIENT_TIMEOUT_S = 4.0
LOOKUP_WAIT_S = 5.0
OPERATOR_PERIOD_S = 0.25
HEALTH_PERIOD_S = 0.5
MAX_OPS_PER_CLIENT = 1_000_000  # a count bound next to the time bound
GENEROUS_QUOTA_GB = 1.0
PROBE_FAMILY_BASE = 1_000_000  # families only the recovery probes use


def url_salt(salt: str) -> str:
    return salt or "_default"


# -- deterministic content ----------------------------------------------------------------


class Workload:
    """Token families and the bytes of every chunk, derived from (salt, family, index) alone."""

    def __init__(self) -> None:
        self.hasher = TokenHasher("blake3", CHUNK)
        self.nbytes = 2 * LAYERS * CHUNK * HIDDEN * 2
        self._tokens: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def tokens(self, family: int) -> list[int]:
        with self._lock:
            found = self._tokens.get(family)
            if found is None:
                rng = np.random.default_rng(family)
                found = [int(t) for t in rng.integers(0, 50_000, CHUNKS_PER_FAMILY * CHUNK)]
                found[0] = family % 50_000  # distinct first chunks for distinct families
                self._tokens[family] = found
            return found

    def content(self, salt: str, family: int, index: int) -> np.ndarray:
        seed = int.from_bytes(blake3.blake3(f"{salt}|{family}|{index}".encode()).digest()[:8], "little")
        return np.random.default_rng(seed).integers(0, 256, self.nbytes, dtype=np.uint8)

    def chunk_hashes(self, family: int) -> list[str]:
        return [h.hex() for h in self.hasher.chunk_hashes(self.tokens(family))]


# -- figures ------------------------------------------------------------------------------


class Stats:
    """Thread-safe counters and a bounded list of notes (corruption and crash details)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.notes: list[str] = []

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def note(self, text: str) -> None:
        with self._lock:
            if len(self.notes) < 50:
                self.notes.append(text)

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self.counts[name]


# -- HTTP ---------------------------------------------------------------------------------


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """(status, decoded JSON body or None); status 0 when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw) if raw else None
        except ValueError:
            return err.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


def l2_listing(admin: str, max_pages: int = 200) -> set[tuple[str, str]] | None:
    """Every (cache_salt, chunk_hash_hex) of the primary adapter's listing; None on an error."""
    keys: set[tuple[str, str]] = set()
    token: str | None = None
    for _ in range(max_pages):
        query = {"page_size": "5000", "model_name": MODEL}
        if token:
            query["page_token"] = token
        status, body = http("GET", f"{admin}/l2/keys?{urllib.parse.urlencode(query)}")
        if status != 200 or not isinstance(body, dict):
            return None
        for entry in body["entries"]:
            keys.add((entry["key"].get("cache_salt", ""), entry["key"]["chunk_hash_hex"]))
        token = body.get("next_page_token")
        if not token:
            return keys
    return None


def store_controller(admin: str) -> dict[str, Any] | None:
    status, body = http("GET", f"{admin}/status")
    if status != 200 or not isinstance(body, dict):
        return None
    ctrl: dict[str, Any] = body["storage_manager"]["store_controller"]
    return ctrl


def adapter_healthy(admin: str) -> bool:
    status, body = http("GET", f"{admin}/status")
    if status != 200 or not isinstance(body, dict):
        return False
    return all(a["is_healthy"] for a in _entries(body["storage_manager"]["l2_adapters"]))


def completed_write_backs(ctrl: dict[str, Any]) -> int:
    return sum(int(a["completed"]) for a in _entries(ctrl["adapters"]))


def _entries(node: Any) -> list[Any]:
    # Per-adapter status nodes: a mapping keyed "index:name", or a list in configuration order.
    return list(node.values()) if isinstance(node, dict) else list(node)


# -- servers ------------------------------------------------------------------------------


@dataclass
class Server:
    """One lmcache-server subprocess with its admin and ZeroMQ URLs."""

    proc: ServerProcess
    admin: str
    zmq: str
    shm_name: str
    expected_exit: threading.Event = field(default_factory=threading.Event)

    def kill9(self) -> None:
        self.expected_exit.set()
        self.proc.proc.send_signal(signal.SIGKILL)
        self.proc.proc.wait(10)

    def stop(self) -> int:
        self.expected_exit.set()
        return int(self.proc.stop(signal.SIGTERM, timeout=20))


class Fleet:
    """Starts servers (and remembers them, so every one is killed and its shm unlinked at the end)."""

    def __init__(self, l1_size_gb: float, state_dir: Path) -> None:
        self.l1_size_gb = l1_size_gb
        self.state_dir = state_dir
        self.started: list[Server] = []
        self.start_seconds: list[float] = []

    def start(self, adapter: dict[str, Any]) -> Server:
        begun = time.monotonic()
        shm = f"soak_{uuid.uuid4().hex[:12]}"
        args = [*server_command(), "--http-port", "0", "--port", "0", "--l1-size-gb", str(self.l1_size_gb),
                "--chunk-size", str(CHUNK), "--shm-name", shm, "--eviction-policy", "IsolatedLRU",
                "--eviction-interval-seconds", "0.25", "--state-dir", str(self.state_dir),
                "--l2-adapter", json.dumps(adapter)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
        env.update(FAKE_CREDENTIALS)
        popen = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        proc = ServerProcess(popen)
        threading.Thread(target=pump_stderr, args=(popen, proc), daemon=True).start()
        server = Server(proc, "", "", shm)
        self.started.append(server)
        line = proc.wait_for_line(READY_RE, START_TIMEOUT_S).string
        ready = READY_RE.search(line)
        assert ready is not None
        server.admin = ready.group(1)
        match = ZMQ_RE.search(line)
        if match is None:
            raise RuntimeError(f"no zmq URL in the ready line: {line}")
        server.zmq = match.group(1)
        self.start_seconds.append(round(time.monotonic() - begun, 2))
        return server

    def close(self) -> None:
        for server in self.started:
            server.expected_exit.set()
            if server.proc.proc.poll() is None:
                server.proc.proc.kill()
                server.proc.proc.wait(10)
            path = Path("/dev/shm") / f"lmcache_l1_pool_{server.shm_name}"
            if path.exists():
                path.unlink()


class Monitor(threading.Thread):
    """Counts a crash when the server exits unasked or /healthcheck stays silent past a deadline."""

    def __init__(self, server: Server, stats: Stats, deadline_s: float, label: str) -> None:
        super().__init__(daemon=True, name=f"soak-monitor-{label}")
        self.server = server
        self.stats = stats
        self.deadline_s = deadline_s
        self.label = label
        self.halt = threading.Event()
        self.max_latency_s = 0.0

    def run(self) -> None:
        silent_since: float | None = None
        while not self.halt.is_set():
            code = self.server.proc.proc.poll()
            if code is not None:
                if not self.server.expected_exit.is_set():
                    self.stats.add("server_crashes")
                    self.stats.note(f"{self.label}: server exited unasked with code {code}; stderr tail:\n"
                                    + "".join(self.server.proc.stderr_lines[-20:]))
                return
            started = time.monotonic()
            status, _ = http("GET", f"{self.server.admin}/healthcheck", timeout=self.deadline_s)
            now = time.monotonic()
            if status == 0 and not self.server.expected_exit.is_set():
                silent_since = silent_since or started
                if now - silent_since >= self.deadline_s:
                    self.stats.add("server_crashes")
                    self.stats.note(f"{self.label}: /healthcheck silent for {now - silent_since:.1f} s")
                    return
            else:
                silent_since = None
                self.max_latency_s = max(self.max_latency_s, now - started)
            self.halt.wait(HEALTH_PERIOD_S)

    def finish(self) -> None:
        self.halt.set()
        self.join(self.deadline_s + 5)


@contextmanager
def monitored(server: Server, stats: Stats, deadline_s: float, label: str, health: list[float]) -> Iterator[Monitor]:
    monitor = Monitor(server, stats, deadline_s, label)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.finish()
        health.append(monitor.max_latency_s)


# -- engine clients -----------------------------------------------------------------------


class Engine:
    """One engine client: a ZeroMQ connection and an engine-driven registration."""

    def __init__(self, url: str, instance_id: int, workload: Workload, stats: Stats, phase: str) -> None:
        self.client = LMCacheClient(url, timeout=CLIENT_TIMEOUT_S)
        self.ctx: EngineDrivenContext = self.client.register_engine_driven(
            instance_id, model_name=MODEL, num_layers=LAYERS, hidden_dim_size=HIDDEN)
        if self.ctx.pickle_mode:
            raise RuntimeError("the server chose pickle mode; the soak needs the shared-memory path")
        self.workload = workload
        self.stats = stats
        self.phase = phase
        self._rid = 0
        self._prefix = f"{phase}-{instance_id}-{uuid.uuid4().hex[:6]}"

    def close(self) -> None:
        self.client.close()

    def request_id(self) -> str:
        self._rid += 1
        return f"{self._prefix}-{self._rid}"

    def verify(self, salt: str, family: int) -> Callable[[int, torch.Tensor], None]:
        def drain(index: int, slot: torch.Tensor) -> None:
            got = slot.numpy().copy()
            expected = self.workload.content(salt, family, index)
            self.stats.add("retrieved_chunks")
            if got.shape != expected.shape or not np.array_equal(got, expected):
                self.stats.add("corrupt_chunks")
                self.stats.note(f"{self.phase}: corrupt chunk salt={salt!r} family={family} index={index} "
                                f"({int(np.count_nonzero(got != expected)) if got.shape == expected.shape else 'size'}"
                                " bytes differ)")
        return drain

    def fill(self, salt: str, family: int, start_chunk: int) -> Callable[[int, torch.Tensor], None]:
        def write(index: int, slot: torch.Tensor) -> None:
            data = self.workload.content(salt, family, start_chunk + index)
            if slot.numel() != data.size:
                raise RuntimeError(f"slot of {slot.numel()} bytes for a {data.size}-byte chunk")
            slot.copy_(torch.from_numpy(data))
        return write

    def lookup(self, salt: str, family: int, chunks: int, rid: str) -> int:
        tokens = self.workload.tokens(family)
        self.client.lookup(make_key(MODEL, tokens, rid, end=chunks * CHUNK, cache_salt=salt))
        self.stats.add("lookups")
        hits = min(self.client.wait_for_lookup(rid, timeout=LOOKUP_WAIT_S), chunks)
        self.stats.add("hit_chunks", hits)
        return hits

    def retrieve(self, salt: str, family: int, hits: int, rid: str) -> bool:
        tokens = self.workload.tokens(family)
        key = make_key(MODEL, tokens, rid, end=hits * CHUNK, worker_id=0, cache_salt=salt)
        ok = self.client.retrieve_engine_driven_with(self.ctx, key, self.verify(salt, family))
        self.stats.add("retrieves" if ok else "retrieve_misses")
        return ok

    def store(self, salt: str, family: int, first: int, last: int, rid: str) -> bool:
        tokens = self.workload.tokens(family)
        key = make_key(MODEL, tokens, rid, start=first * CHUNK, end=last * CHUNK, worker_id=0, cache_salt=salt)
        ok = self.client.store_engine_driven_with(self.ctx, key, self.fill(salt, family, first))
        self.stats.add("stores" if ok else "store_failures")
        if ok:
            self.stats.add("stored_chunks", last - first)
        return ok

    def request(self, salt: str, family: int, chunks: int) -> int:
        """One engine request: lookup, retrieve the hit prefix, store the rest. Returns hits."""
        rid = self.request_id()
        try:
            hits = self.lookup(salt, family, chunks, rid)
            if hits:
                self.retrieve(salt, family, hits, rid)
            if hits < chunks:
                self.store(salt, family, hits, chunks, rid)
            return hits
        finally:
            self.client.end_session(rid)


def client_loop(url: str, cid: int, workload: Workload, stats: Stats, phase: str, families: range,
                halt: threading.Event, deadline: float, seed: int) -> None:
    rng = random.Random(seed * 1000 + cid)
    engine: Engine | None = None
    try:
        for _ in range(MAX_OPS_PER_CLIENT):
            if halt.is_set() or time.monotonic() >= deadline:
                return
            try:
                if engine is None:
                    engine = Engine(url, cid, workload, stats, phase)
                engine.request(rng.choice(SALTS), rng.choice(families), rng.randint(1, CHUNKS_PER_FAMILY))
            except Exception as exc:  # a timeout while the server is down, a closed pool, ...
                stats.add(f"client_errors_{phase}")
                if stats[f"client_errors_{phase}"] <= 3:
                    stats.note(f"{phase}: client {cid}: {type(exc).__name__}: {exc}")
                if engine is not None:
                    engine.close()
                    engine = None
                halt.wait(0.2)  # back off before reconnecting to a server that may be restarting
    finally:
        if engine is not None:
            engine.close()


@contextmanager
def clients(url: str, n: int, workload: Workload, stats: Stats, phase: str, families: range,
            seconds: float, seed: int) -> Iterator[threading.Event]:
    """Run `n` client threads for at most `seconds` (or until the yielded event is set)."""
    halt = threading.Event()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=client_loop, name=f"soak-client-{phase}-{i}", daemon=True,
                                args=(url, 100 + i, workload, stats, phase, families, halt, deadline, seed))
               for i in range(n)]
    for t in threads:
        t.start()
    try:
        yield halt
    finally:
        halt.set()
        for t in threads:
            t.join(CLIENT_TIMEOUT_S * 3 + LOOKUP_WAIT_S)
            if t.is_alive():
                stats.add("client_threads_stuck")
                stats.note(f"{phase}: {t.name} did not stop within its bound")


def run_for(seconds: float, halt: threading.Event | None = None) -> None:
    """Let the clients work for `seconds` (the soak's own pacing, not a wait for a thread)."""
    (halt or threading.Event()).wait(seconds)


# -- operator -----------------------------------------------------------------------------


def operator_loop(admin: str, stats: Stats, halt: threading.Event, deadline: float, seed: int,
                  allow_l2_delete: bool) -> None:
    rng = random.Random(seed)
    actions = ["clear", "clear_salt", "quota_set", "quota_set", "quota_delete", "status"]
    if allow_l2_delete:
        actions += ["l2_delete", "l2_delete"]
    for _ in range(100_000):
        if halt.is_set() or time.monotonic() >= deadline:
            return
        action = rng.choice(actions)
        salt = rng.choice(SALTS)
        if action == "clear":
            status, body = http("POST", f"{admin}/clear-cache")
        elif action == "clear_salt":
            status, body = http("POST", f"{admin}/clear-cache?cache_salt={salt}" if salt else f"{admin}/clear-cache")
        elif action == "quota_set":
            limit = rng.choice([0.002, 0.005, 0.01, 0.02, GENEROUS_QUOTA_GB])
            status, body = http("PUT", f"{admin}/quota/{url_salt(salt)}", {"limit_gb": limit})
        elif action == "quota_delete":
            status, body = http("DELETE", f"{admin}/quota/{url_salt(salt)}")
        elif action == "status":
            status, body = http("GET", f"{admin}/status")
        else:
            status, body = http("GET", f"{admin}/l2/keys?page_size=200&model_name={urllib.parse.quote(MODEL)}")
            if status == 200 and body["entries"]:
                victims = rng.sample(body["entries"], min(len(body["entries"]), rng.randint(1, 8)))
                status, reply = http("DELETE", f"{admin}/l2", {"keys": [v["key"] for v in victims]})
                if status == 200 and reply.get("ok"):
                    stats.add("l2_keys_deleted_by_operator", len(victims))
        stats.add("admin_calls")
        stats.add(f"admin_{action}")
        if status == 0 or status >= 500:
            stats.add("admin_errors")
            error = body.get("error") if isinstance(body, dict) else None
            stats.note(f"operator {action}: HTTP {status}" + (f" ({error})" if error else ""))
        halt.wait(OPERATOR_PERIOD_S)


@contextmanager
def operator(admin: str, stats: Stats, seconds: float, seed: int, allow_l2_delete: bool = True) -> Iterator[None]:
    halt = threading.Event()
    thread = threading.Thread(target=operator_loop, name="soak-operator", daemon=True,
                              args=(admin, stats, halt, time.monotonic() + seconds, seed, allow_l2_delete))
    thread.start()
    try:
        yield
    finally:
        halt.set()
        thread.join(30)


def generous_quotas(admin: str) -> None:
    for salt in SALTS:
        status, _ = http("PUT", f"{admin}/quota/{url_salt(salt)}", {"limit_gb": GENEROUS_QUOTA_GB})
        if status != 200:
            raise RuntimeError(f"PUT /quota/{url_salt(salt)} answered {status}")


def eviction_figures(admin: str) -> dict[str, int]:
    status, body = http("GET", f"{admin}/status")
    if status != 200:
        return {}
    ev = body["storage_manager"]["eviction_controller"]
    return {k: int(ev[k]) for k in ("cycles", "evicted_objects_total", "mandatory_evicted_objects_total",
                                    "pressure_cycles_total", "failures")}


# -- probes -------------------------------------------------------------------------------


def round_trip(url: str, workload: Workload, stats: Stats, family: int, salt: str, phase: str) -> bool:
    """Store a fresh family and read it back; True when every chunk came back intact."""
    engine = Engine(url, 900 + family % 100, workload, stats, phase)
    try:
        engine.request(salt, family, CHUNKS_PER_FAMILY)
        before = stats["corrupt_chunks"]
        rid = engine.request_id()
        try:
            hits = engine.lookup(salt, family, CHUNKS_PER_FAMILY, rid)
            ok = hits == CHUNKS_PER_FAMILY and engine.retrieve(salt, family, hits, rid)
        finally:
            engine.client.end_session(rid)
        return ok and stats["corrupt_chunks"] == before
    finally:
        engine.close()


def poll(cond: Callable[[], bool], timeout: float, period: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(period)  # polling another process (the server), not one of our threads
    return False


# -- acknowledged writes ------------------------------------------------------------------


def serve_from_l2(engine: Engine, salt: str, family: int, indices: set[int]) -> set[int]:
    """The acknowledged chunk indices of one family that the server serves back intact.

    A lookup locks the leading run of L1 hits and prefetches the leading run of L2 hits after it;
    it does not go on past a chunk that is in neither. So an acknowledged chunk behind a hole
    (a chunk whose write-back had not finished at the kill) is reached by first putting the
    chunks before it into L1, round by round."""
    top = max(indices) + 1
    verified: set[int] = set()
    for _ in range(CHUNKS_PER_FAMILY + 1):
        remaining = indices - verified
        if not remaining:
            break
        first = min(remaining)
        rid = engine.request_id()
        try:
            if first:
                engine.store(salt, family, 0, first, rid)
            before = engine.stats["corrupt_chunks"]
            hits = engine.lookup(salt, family, top, rid)
            if hits and not engine.retrieve(salt, family, hits, rid):
                hits = 0
            if engine.stats["corrupt_chunks"] != before:
                hits = 0  # a corrupt chunk is counted as corrupt, and not as served
        finally:
            engine.client.end_session(rid)
        newly = {i for i in remaining if i < hits}
        if not newly:
            break
        verified |= newly
    return verified


def verify_acknowledged(server: Server, workload: Workload, stats: Stats, acked: set[tuple[str, str]],
                        families: list[range]) -> dict[str, int]:
    """Serve every acknowledged key back from the restarted server's L2, byte for byte."""
    where: dict[tuple[str, str], tuple[int, int]] = {}
    for fams in families:
        for fam in fams:
            for idx, h in enumerate(workload.chunk_hashes(fam)):
                for salt in SALTS:
                    where[(salt, h)] = (fam, idx)
    by_family: dict[tuple[str, int], set[int]] = {}
    unknown = 0
    for key in acked:
        if key not in where:
            unknown += 1
            continue
        fam, idx = where[key]
        by_family.setdefault((key[0], fam), set()).add(idx)
    served = lost = 0
    engine = Engine(server.zmq, 999, workload, stats, "verify")
    try:
        for (salt, fam), indices in sorted(by_family.items()):
            verified = serve_from_l2(engine, salt, fam, indices)
            served += len(verified)
            for idx in sorted(indices - verified):
                lost += 1
                stats.note(f"acknowledged chunk not served after restart: salt={salt!r} family={fam} index={idx}")
    finally:
        engine.close()
    return {"served": served, "lost": lost, "unknown_keys": unknown}


# -- the run ------------------------------------------------------------------------------


@dataclass
class SoakParams:
    """How long and how hard to soak."""

    duration_s: float = 140.0
    clients: int = 4
    l1_size_gb: float = 0.03125
    families: int = 48  # per phase; x3 salts x4 chunks x64 KiB = 36 MiB > the default L1
    health_deadline_s: float = 10.0
    seed: int = 0


def run(params: SoakParams) -> dict[str, Any]:
    """Run the three phases and return the report (see module docstring)."""
    started = time.monotonic()
    stats = Stats()
    workload = Workload()
    health: list[float] = []
    evictions: list[dict[str, int]] = []
    report: dict[str, Any] = {"params": vars(params).copy()}
    d = params.duration_s
    churn_s, crash_load_s, after_restart_s = 0.40 * d, max(3.0, 0.08 * d), max(3.0, 0.08 * d)
    s3_before_s, s3_outage_s, s3_after_s = max(3.0, 0.1 * d), max(3.0, 0.1 * d), max(3.0, 0.1 * d)
    fam = params.families
    churn_fams, crash_fams, s3_fams = range(0, fam), range(fam, 2 * fam), range(2 * fam, 3 * fam)
    recovery: dict[str, Any] = {}
    acked_report: dict[str, Any] = {}
    moto: MotoServer | None = None

    with tempfile.TemporaryDirectory(prefix="lmcache-soak-") as tmp:
        fleet = Fleet(params.l1_size_gb, Path(tmp) / "state")
        fs_adapter = {"type": "fs", "base_path": str(Path(tmp) / "l2")}
        try:
            # 1. churn ---------------------------------------------------------------------
            first = fleet.start(fs_adapter)
            generous_quotas(first.admin)
            with monitored(first, stats, params.health_deadline_s, "churn", health):
                with clients(first.zmq, params.clients, workload, stats, "churn", churn_fams, churn_s, params.seed):
                    with operator(first.admin, stats, churn_s, params.seed):
                        run_for(churn_s)
                generous_quotas(first.admin)  # the restart below must not trim the verification's chunks
                evictions.append(eviction_figures(first.admin))

                # 2. kill -9 mid-write-back ----------------------------------------------------
                acked: set[tuple[str, str]] | None = None
                ctrl: dict[str, Any] = {}
                with clients(first.zmq, params.clients, workload, stats, "crash", crash_fams,
                             crash_load_s + 30, params.seed + 1) as halt:
                    run_for(crash_load_s, halt)
                    # List first, then check that write-backs are still queued or in flight, then
                    # kill at once: everything listed is acknowledged, and some write-back is cut.
                    for _ in range(200):
                        acked = l2_listing(first.admin)
                        ctrl = store_controller(first.admin) or {}
                        if acked is not None and ctrl.get("queue_size", 0) + ctrl.get("in_flight_batches", 0):
                            break
                    first.kill9()
                    killed_at = time.monotonic()
                    if acked is None:
                        raise RuntimeError("GET /l2/keys failed just before the kill")
                    pending_at_kill = int(ctrl.get("queue_size", 0)) + int(ctrl.get("in_flight_batches", 0))
                    if not pending_at_kill:
                        stats.note("crash: no write-back was queued or in flight when the kill was sent")
                    # restart at once, as a supervisor would; the clients still talk to the dead one
                    second = fleet.start(fs_adapter)
                    recovery["kill9_to_ready_s"] = time.monotonic() - killed_at
                    probe_ok = round_trip(second.zmq, workload, stats, PROBE_FAMILY_BASE, "alice", "probe")
                    recovery["kill9_to_first_round_trip_s"] = (time.monotonic() - killed_at) if probe_ok else None

            with monitored(second, stats, params.health_deadline_s, "restart", health):
                listed_after = l2_listing(second.admin) or set()
                missing = acked - listed_after
                for salt, h in sorted(missing)[:10]:
                    stats.note(f"acknowledged key not listed after restart: salt={salt!r} hash={h}")
                served = verify_acknowledged(second, workload, stats, acked, [churn_fams, crash_fams])
                acked_report = {
                    "acknowledged_l2_writes": len(acked),
                    "write_backs_pending_at_kill": pending_at_kill,
                    "not_listed_after_restart": len(missing),
                    "served_after_restart": served["served"],
                    "not_served_after_restart": served["lost"],
                    "unknown_keys": served["unknown_keys"],
                }
                with clients(second.zmq, params.clients, workload, stats, "restarted", crash_fams,
                             after_restart_s, params.seed + 2):
                    run_for(after_restart_s)
                evictions.append(eviction_figures(second.admin))
                if second.stop() != 0:
                    stats.note("restarted server: SIGTERM exit was not 0")

            # 3. s3 outage -------------------------------------------------------------------
            url, proc = start_moto()
            moto = MotoServer(url, proc)
            moto.client().create_bucket(Bucket=BUCKET)
            s3_adapter = {"type": "s3", "bucket": BUCKET, "endpoint_url": url, "connect_timeout": 1,
                          "read_timeout": 2, "max_attempts": 1, "circuit_breaker_threshold": 2,
                          "circuit_breaker_backoff_seconds": 1, "circuit_breaker_max_backoff_seconds": 2}
            third = fleet.start(s3_adapter)
            generous_quotas(third.admin)
            total = s3_before_s + s3_outage_s + s3_after_s + 40
            with monitored(third, stats, params.health_deadline_s, "s3", health):
                with clients(third.zmq, params.clients, workload, stats, "s3", s3_fams, total, params.seed + 3) as halt:
                    with operator(third.admin, stats, total, params.seed + 4):
                        run_for(s3_before_s, halt)
                        moto.stop()
                        run_for(s3_outage_s, halt)
                        if not poll(lambda: not adapter_healthy(third.admin), timeout=10):
                            stats.note("s3: the adapter never reported the outage")
                        ctrl = store_controller(third.admin) or {"adapters": {}}
                        completed_before = completed_write_backs(ctrl)
                        moto.proc = restart_moto(url)
                        restarted_at = time.monotonic()
                        moto.client().create_bucket(Bucket=BUCKET)  # moto keeps no state across a restart

                        def healed() -> bool:
                            now = store_controller(third.admin)
                            return (now is not None and adapter_healthy(third.admin)
                                    and completed_write_backs(now) > completed_before)

                        if poll(healed, timeout=30, period=0.05):
                            recovery["s3_restart_to_write_back_s"] = time.monotonic() - restarted_at
                        else:
                            recovery["s3_restart_to_write_back_s"] = None
                            stats.note("s3: no write-back completed within 30 s of the restart")
                        recovery["s3_restart_to_l2_round_trip_s"] = s3_round_trip(
                            third, workload, stats, restarted_at)
                        run_for(s3_after_s, halt)
                evictions.append(eviction_figures(third.admin))
                if third.stop() != 0:
                    stats.note("s3 server: SIGTERM exit was not 0")
        finally:
            recovery["server_start_s"] = fleet.start_seconds
            fleet.close()
            if moto is not None:
                moto.stop()

    counts = stats.counts
    ops: dict[str, Any] = {name: counts[name] for name in ("lookups", "hit_chunks", "retrieves", "retrieved_chunks",
                                          "retrieve_misses", "stores", "stored_chunks", "store_failures",
                                          "admin_calls", "admin_errors", "l2_keys_deleted_by_operator")}
    ops["admin_calls_by_action"] = {k.removeprefix("admin_"): v for k, v in counts.items()
                                    if k.startswith("admin_") and k not in ("admin_calls", "admin_errors")}
    ops["client_errors_by_phase"] = {k.removeprefix("client_errors_"): v for k, v in counts.items()
                                     if k.startswith("client_errors_")}
    ops["engine_requests_and_admin_calls"] = counts["lookups"] + counts["admin_calls"]
    lost = acked_report.get("not_served_after_restart", 0) + acked_report.get("not_listed_after_restart", 0)
    report.update(
        operations=ops,
        corrupt_chunks_served=counts["corrupt_chunks"],
        acknowledged_l2_writes_lost=lost,
        server_crashes=counts["server_crashes"],
        acknowledged=acked_report,
        recovery_s=recovery,
        eviction=[e for e in evictions if e],
        max_healthcheck_latency_s=round(max(health, default=0.0), 3),
        client_threads_stuck=counts["client_threads_stuck"],
        notes=stats.notes,
        wall_s=round(time.monotonic() - started, 1),
    )
    report["pass"] = report["corrupt_chunks_served"] == 0 and lost == 0 and report["server_crashes"] == 0
    return report


def s3_round_trip(server: Server, workload: Workload, stats: Stats, since: float) -> float | None:
    """After the S3 restart: a fresh family written back to S3, dropped from L1 and read back from S3."""
    family = PROBE_FAMILY_BASE + 1
    salt = "alice"
    hashes = workload.chunk_hashes(family)
    engine = Engine(server.zmq, 950, workload, stats, "s3-probe")
    try:
        rid = engine.request_id()
        try:
            engine.store(salt, family, 0, CHUNKS_PER_FAMILY, rid)
        finally:
            engine.client.end_session(rid)

        def in_s3() -> bool:
            listing = l2_listing(server.admin)
            return listing is not None and all((salt, h) in listing for h in hashes)

        if not poll(in_s3, timeout=30, period=0.1):
            stats.note("s3: the probe's chunks never appeared in the listing after the restart")
            return None
        # moto is a slow Python server on a busy machine: a lookup may outlast its wait, so retry
        # (bounded) and report the time of the first complete read-back.
        attempts: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(attempts) < 10:
            http("POST", f"{server.admin}/clear-cache?cache_salt={salt}")
            before = stats["corrupt_chunks"]
            rid = engine.request_id()
            try:
                hits = engine.lookup(salt, family, CHUNKS_PER_FAMILY, rid)
                ok = hits == CHUNKS_PER_FAMILY and engine.retrieve(salt, family, hits, rid)
            finally:
                engine.client.end_session(rid)
            attempts.append(hits)
            if ok and stats["corrupt_chunks"] == before:
                if len(attempts) > 1:
                    stats.note(f"s3: the probe needed {len(attempts)} lookups after the restart (hits {attempts})")
                return time.monotonic() - since
        stats.note(f"s3: the probe never read its {CHUNKS_PER_FAMILY} chunks back from S3 after the restart "
                   f"(hits per attempt {attempts})")
        return None
    finally:
        engine.close()


def render(report: dict[str, Any]) -> str:
    ops = report["operations"]
    ack = report["acknowledged"]
    rec = report["recovery_s"]

    def sec(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} s"

    lines = [
        f"soak: {report['wall_s']} s, {report['params']['clients']} clients, L1 {report['params']['l1_size_gb']} GiB",
        f"  engine requests (lookups)      {ops['lookups']}",
        f"  chunks retrieved and verified  {ops['retrieved_chunks']} ({ops['retrieves']} retrieves, "
        f"{ops['retrieve_misses']} retrieve misses)",
        f"  chunks stored                  {ops['stored_chunks']} ({ops['stores']} stores, "
        f"{ops['store_failures']} refused)",
        f"  admin calls                    {ops['admin_calls']} {ops['admin_calls_by_action']}",
        f"  L2 keys deleted by operator    {ops['l2_keys_deleted_by_operator']}",
        f"  client errors by phase         {ops['client_errors_by_phase']}",
        f"  L1 eviction                    {report['eviction']}",
        f"  acknowledged L2 writes         {ack.get('acknowledged_l2_writes')} "
        f"(write-backs pending at kill: {ack.get('write_backs_pending_at_kill')}, "
        f"served after restart: {ack.get('served_after_restart')})",
        f"  recovery                       kill -9 -> ready {sec(rec.get('kill9_to_ready_s'))}, "
        f"-> first round trip {sec(rec.get('kill9_to_first_round_trip_s'))}; "
        f"S3 restart -> write-back {sec(rec.get('s3_restart_to_write_back_s'))}, "
        f"-> L2 round trip {sec(rec.get('s3_restart_to_l2_round_trip_s'))}",
        f"  server start (ready line)      {rec.get('server_start_s')} s",
        f"  max /healthcheck latency       {report['max_healthcheck_latency_s']} s",
        f"  CORRUPT CHUNKS SERVED          {report['corrupt_chunks_served']}",
        f"  ACKNOWLEDGED L2 WRITES LOST    {report['acknowledged_l2_writes_lost']}",
        f"  SERVER CRASHES                 {report['server_crashes']}",
        f"  result                         {'PASS' if report['pass'] else 'FAIL'}",
    ]
    if report["notes"]:
        lines.append("  notes:")
        lines += [f"    - {n}" for n in report["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=SoakParams.duration_s,
                        help="seconds of client load over the three phases (the run adds server starts)")
    parser.add_argument("--clients", type=int, default=SoakParams.clients)
    parser.add_argument("--l1-size-gb", type=float, default=SoakParams.l1_size_gb)
    parser.add_argument("--families", type=int, default=SoakParams.families, help="token families per phase")
    parser.add_argument("--health-deadline", type=float, default=SoakParams.health_deadline_s)
    parser.add_argument("--seed", type=int, default=SoakParams.seed)
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if args.duration <= 0 or not 1 <= args.clients <= 64 or args.families < 1:
        parser.error("--duration must be > 0, --clients in 1..64, --families >= 1")
    report = run(SoakParams(args.duration, args.clients, args.l1_size_gb, args.families,
                            args.health_deadline, args.seed))
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
